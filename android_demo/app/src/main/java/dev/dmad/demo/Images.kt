package dev.dmad.demo

import android.graphics.Bitmap
import android.graphics.BitmapFactory
import androidx.exifinterface.media.ExifInterface
import java.io.IOException
import java.io.InputStream

/** An image that could not be read; the message is shown to the user as is. */
class ImageException(message: String) : Exception(message)

/** A decoded photo, upright, and the EXIF orientation that was applied to it. */
class Photo(val bitmap: Bitmap, val exifOrientation: Int, val orientation: Orientation) {
    val size: Size get() = Size(bitmap.width, bitmap.height)
}

object Images {
    /**
     * Decodes the image [open] yields, subsampled so its long side stays >= [wantedLongSide] (no
     * huge bitmaps from a 50 MP photo), and turns it upright by its EXIF orientation (phones store
     * portrait photos sideways and say so in EXIF). [what] names it in error messages.
     */
    fun decode(what: String, wantedLongSide: Int, open: () -> InputStream?): Photo {
        try {
            val bounds = BitmapFactory.Options().apply { inJustDecodeBounds = true }
            (open() ?: throw ImageException("$what could not be opened")).use {
                BitmapFactory.decodeStream(it, null, bounds)
            }
            if (bounds.outWidth <= 0 || bounds.outHeight <= 0) {
                throw ImageException("$what is not an image this phone can decode")
            }
            val options = BitmapFactory.Options().apply {
                inSampleSize = InputGeometry.sampleSize(bounds.outWidth, bounds.outHeight, wantedLongSide)
                inPreferredConfig = Bitmap.Config.ARGB_8888
            }
            val stored = (open() ?: throw ImageException("$what could not be opened")).use {
                BitmapFactory.decodeStream(it, null, options)
            } ?: throw ImageException("$what could not be decoded")
            val code = exifOrientation(open)
            val orientation = InputGeometry.exifOrientation(code)
            return Photo(upright(stored, orientation), code, orientation)
        } catch (e: IOException) {
            throw ImageException("$what could not be read: ${e.message}")
        } catch (e: SecurityException) {
            throw ImageException("$what is not readable by this app: ${e.message}")
        } catch (e: OutOfMemoryError) {
            throw ImageException("$what is too large to decode")
        }
    }

    /** The EXIF orientation tag; 1 (normal) when the image has none or it cannot be read (PNG without eXIf). */
    private fun exifOrientation(open: () -> InputStream?): Int {
        return try {
            val stream = open() ?: return ExifInterface.ORIENTATION_NORMAL
            stream.use { ExifInterface(it).getAttributeInt(ExifInterface.TAG_ORIENTATION, ExifInterface.ORIENTATION_NORMAL) }
        } catch (e: IOException) {
            ExifInterface.ORIENTATION_NORMAL
        } catch (e: RuntimeException) {
            ExifInterface.ORIENTATION_NORMAL
        }
    }

    /** Applies [o] with [InputGeometry.orient], the function the unit tests check. */
    private fun upright(stored: Bitmap, o: Orientation): Bitmap {
        if (o == Orientation.UPRIGHT) return stored
        val pixels = pixelsOf(stored)
        val (turned, size) = InputGeometry.orient(pixels, stored.width, stored.height, o)
        return fromPixels(turned, size.width, size.height)
    }

    /**
     * The model input at [size]: the centred part of [photo] with the aspect ratio of [size]
     * ([InputGeometry.centreCrop], never a stretch), scaled with bilinear filtering. Returns the
     * bitmap (shown as the input) and its ARGB pixels, row-major.
     */
    fun toModelInput(photo: Bitmap, size: Size): Pair<Bitmap, IntArray> {
        val argb = if (photo.config == Bitmap.Config.ARGB_8888) {
            photo
        } else {
            photo.copy(Bitmap.Config.ARGB_8888, false) ?: throw ImageException("the image could not be converted to ARGB")
        }
        val crop = InputGeometry.centreCrop(argb.width, argb.height, size)
        val cropped = if (crop.width == argb.width && crop.height == argb.height) {
            argb
        } else {
            Bitmap.createBitmap(argb, crop.left, crop.top, crop.width, crop.height)
        }
        val scaled = if (cropped.width == size.width && cropped.height == size.height) {
            cropped
        } else {
            Bitmap.createScaledBitmap(cropped, size.width, size.height, true)
        }
        return scaled to pixelsOf(scaled)
    }

    fun fromPixels(pixels: IntArray, width: Int, height: Int): Bitmap =
        Bitmap.createBitmap(pixels, width, height, Bitmap.Config.ARGB_8888)

    private fun pixelsOf(b: Bitmap): IntArray {
        val pixels = IntArray(b.width * b.height)
        b.getPixels(pixels, 0, b.width, 0, 0, b.width, b.height)
        return pixels
    }
}
