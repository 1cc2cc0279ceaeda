package dev.dmad.demo

import org.junit.Assert.assertArrayEquals
import org.junit.Assert.assertEquals
import org.junit.Test
import java.nio.ByteBuffer
import java.nio.ByteOrder

class PixelMappingTest {
    @Test
    fun pixelRangeMapsToMinusOneToOne() {
        assertEquals(-1.0f, PixelMapping.toTensor(0), 0f)
        assertEquals(1.0f, PixelMapping.toTensor(PixelMapping.PIXEL_MAX), 0f)
        assertEquals(0.0039215684f, PixelMapping.toTensor(128), 1e-7f)
    }

    @Test
    fun fromTensorRoundsHalfToEvenClampsAndMapsNanToZero() {
        assertEquals(0, PixelMapping.fromTensor(-1.0f))
        assertEquals(PixelMapping.PIXEL_MAX, PixelMapping.fromTensor(1.0f))
        assertEquals(0, PixelMapping.fromTensor(-3.0f))
        assertEquals(PixelMapping.PIXEL_MAX, PixelMapping.fromTensor(7.0f))
        assertEquals(0, PixelMapping.fromTensor(Float.NaN))
        // Floats y whose (y + 1) * 127.5 is exactly 128.5 and 200.5 in float32: ties go to the even
        // neighbour (half-up would give 129 and 201).
        val y1 = Float.fromBits(1006665807)
        val y2 = Float.fromBits(1058181778)
        assertEquals(128.5f, (y1 + 1f) * PixelMapping.HALF_SPAN, 0f)
        assertEquals(200.5f, (y2 + 1f) * PixelMapping.HALF_SPAN, 0f)
        assertEquals(128, PixelMapping.fromTensor(y1))
        assertEquals(200, PixelMapping.fromTensor(y2))
    }

    @Test
    fun quantizeRoundsHalfToEvenAndSaturates() {
        assertEquals(2, PixelMapping.quantize(2.5f, 1f, 0))
        assertEquals(4, PixelMapping.quantize(3.5f, 1f, 0))
        assertEquals(PixelMapping.INT8_MAX, PixelMapping.quantize(5f, 1f / 128, 0))
        assertEquals(PixelMapping.INT8_MIN, PixelMapping.quantize(-5f, 1f / 128, 0))
        assertEquals(0.5f, PixelMapping.dequantize(63, 1f / 128, -1), 0f)
    }

    @Test
    fun writeInputIsNhwcRgbFloat32() {
        val argb = intArrayOf(0xFF000000.toInt() or (0 shl 16) or (128 shl 8) or PixelMapping.PIXEL_MAX)
        val buf = ByteBuffer.allocate(12).order(ByteOrder.nativeOrder())
        PixelMapping.writeInput(argb, buf, null)
        assertEquals(0, buf.position())
        assertEquals(-1f, buf.getFloat(0), 0f)
        assertEquals(PixelMapping.toTensor(128), buf.getFloat(4), 0f)
        assertEquals(1f, buf.getFloat(8), 0f)
    }

    @Test
    fun float32AndInt8RoundTripsGiveThePixelsBack() {
        val argb = IntArray(256) { v -> (0xFF shl 24) or (v shl 16) or ((PixelMapping.PIXEL_MAX - v) shl 8) or (v / 2) }
        val f = ByteBuffer.allocate(argb.size * 12).order(ByteOrder.nativeOrder())
        PixelMapping.writeInput(argb, f, null)
        assertArrayEquals(argb, PixelMapping.readOutput(f, argb.size, null))
        // int8 with the input quantization of MODEL_JSON.md's example: within one level per channel.
        val q = Quantization(0.007843014784157276f, -1)
        val b = ByteBuffer.allocate(argb.size * 3)
        PixelMapping.writeInput(argb, b, q)
        val back = PixelMapping.readOutput(b, argb.size, q)
        for (i in argb.indices) {
            for (shift in intArrayOf(16, 8, 0)) {
                val d = Math.abs(((argb[i] shr shift) and 0xFF) - ((back[i] shr shift) and 0xFF))
                assertEquals("pixel $i", true, d <= 1)
            }
        }
    }

    @Test
    fun bytesPerValue() {
        assertEquals(4, PixelMapping.bytesPerValue(null))
        assertEquals(1, PixelMapping.bytesPerValue(Quantization(0.1f, 0)))
    }
}
