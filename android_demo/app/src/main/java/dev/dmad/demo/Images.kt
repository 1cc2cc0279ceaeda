package dev.dmad.demo

import android.graphics.Bitmap
import android.graphics.BitmapFactory
import java.io.IOException
import java.io.InputStream

/** An image that could not be read; the message is shown to the user as is. */
class ImageException(message: String) : Exception(message)

object Images {
    /**
     * Decodes the image [open] yields, subsampled so its shorter side stays >= [minSide] (no
     * huge bitmaps from a 50 MP photo). [what] names it in error messages.
     */
    fun decode(what: String, minSide: Int, open: () -> InputStream?): Bitmap {
        try {
            val bounds = BitmapFactory.Options().apply { inJustDecodeBounds = true }
            (open() ?: throw ImageException("$what could not be opened")).use {
                BitmapFactory.decodeStream(it, null, bounds)
            }
            if (bounds.outWidth <= 0 || bounds.outHeight <= 0) {
                throw ImageException("$what is not an image this phone can decode")
            }
            var sample = 1
            while (minOf(bounds.outWidth, bounds.outHeight) / (sample * 2) >= minSide) sample *= 2
            val options = BitmapFactory.Options().apply {
                inSampleSize = sample
                inPreferredConfig = Bitmap.Config.ARGB_8888
            }
            val bitmap = (open() ?: throw ImageException("$what could not be opened")).use {
                BitmapFactory.decodeStream(it, null, options)
            }
            return bitmap ?: throw ImageException("$what could not be decoded")
        } catch (e: IOException) {
            throw ImageException("$what could not be read: ${e.message}")
        } catch (e: SecurityException) {
            throw ImageException("$what is not readable by this app: ${e.message}")
        } catch (e: OutOfMemoryError) {
            throw ImageException("$what is too large to decode")
        }
    }

    /**
     * Resizes straight to width x height (no crop, as the dmad test-time transform) and returns
     * the resized bitmap and its ARGB pixels, row-major.
     */
    fun toModelInput(source: Bitmap, width: Int, height: Int): Pair<Bitmap, IntArray> {
        val argb = if (source.config == Bitmap.Config.ARGB_8888) {
            source
        } else {
            source.copy(Bitmap.Config.ARGB_8888, false) ?: throw ImageException("the image could not be converted to ARGB")
        }
        val scaled = Bitmap.createScaledBitmap(argb, width, height, true)
        val pixels = IntArray(width * height)
        scaled.getPixels(pixels, 0, width, 0, 0, width, height)
        return scaled to pixels
    }

    fun fromPixels(pixels: IntArray, width: Int, height: Int): Bitmap =
        Bitmap.createBitmap(pixels, width, height, Bitmap.Config.ARGB_8888)
}
