package dev.dmad.demo

import java.nio.ByteBuffer
import kotlin.math.round

/** int8 quantisation of one tensor: real = (q - zeroPoint) * scale. */
data class Quantization(val scale: Float, val zeroPoint: Int)

/**
 * All pixel <-> tensor arithmetic of the app, and nothing else.
 *
 * The formulas are the ones `model.json` names in `pixel_mapping` (see MODEL_JSON.md); ModelSpec
 * refuses a model.json that asks for others. tests/test_android_app.py holds a Python twin of
 * this file (constants and formulas, one for one) and checks it against PyTorch through the
 * LiteRT interpreter; a test fails when the constants or formulas here and there differ.
 *
 * Arithmetic is float32; round() is half to even (as numpy and torch).
 */
object PixelMapping {
    const val PIXEL_MAX = 255
    const val VALUE_LOW = -1.0f
    const val VALUE_HIGH = 1.0f
    const val HALF_SPAN = 127.5f
    const val INT8_MIN = -128
    const val INT8_MAX = 127
    const val CHANNELS = 3
    const val TO_TENSOR = "x/127.5 - 1"
    const val FROM_TENSOR = "clamp(round((y + 1) * 127.5), 0, 255)"

    /** Pixel value 0..255 -> tensor value in [-1, 1]. */
    fun toTensor(x: Int): Float = x / HALF_SPAN - 1.0f

    /** Tensor value -> int8 code. */
    fun quantize(v: Float, scale: Float, zeroPoint: Int): Int =
        (round(v / scale).toInt() + zeroPoint).coerceIn(INT8_MIN, INT8_MAX)

    /** int8 code -> tensor value. */
    fun dequantize(q: Int, scale: Float, zeroPoint: Int): Float = (q - zeroPoint) * scale

    /** Tensor value -> pixel value 0..255; NaN gives 0. */
    fun fromTensor(y: Float): Int =
        if (y.isNaN()) 0 else round((y + 1.0f) * HALF_SPAN).coerceIn(0.0f, 255.0f).toInt()

    /**
     * ARGB pixels (row-major, as Bitmap.getPixels) -> NHWC input buffer, channels R, G, B.
     * [quant] is null for a float32 input. The buffer is left rewound.
     */
    fun writeInput(pixels: IntArray, buffer: ByteBuffer, quant: Quantization?) {
        buffer.rewind()
        for (p in pixels) {
            putChannel(buffer, (p shr 16) and 0xFF, quant)
            putChannel(buffer, (p shr 8) and 0xFF, quant)
            putChannel(buffer, p and 0xFF, quant)
        }
        buffer.rewind()
    }

    /** NHWC output buffer (R, G, B) -> [count] opaque ARGB pixels. */
    fun readOutput(buffer: ByteBuffer, count: Int, quant: Quantization?): IntArray {
        buffer.rewind()
        return IntArray(count) {
            val r = nextChannel(buffer, quant)
            val g = nextChannel(buffer, quant)
            val b = nextChannel(buffer, quant)
            (0xFF shl 24) or (r shl 16) or (g shl 8) or b
        }
    }

    /** Bytes of one element: 4 for float32, 1 for int8. */
    fun bytesPerValue(quant: Quantization?): Int = if (quant == null) 4 else 1

    private fun putChannel(buffer: ByteBuffer, x: Int, quant: Quantization?) {
        val v = toTensor(x)
        if (quant == null) {
            buffer.putFloat(v)
        } else {
            buffer.put(quantize(v, quant.scale, quant.zeroPoint).toByte())
        }
    }

    private fun nextChannel(buffer: ByteBuffer, quant: Quantization?): Int {
        val y = if (quant == null) {
            buffer.getFloat()
        } else {
            dequantize(buffer.get().toInt(), quant.scale, quant.zeroPoint)
        }
        return fromTensor(y)
    }
}
