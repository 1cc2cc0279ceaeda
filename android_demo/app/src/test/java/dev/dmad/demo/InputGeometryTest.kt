package dev.dmad.demo

import org.junit.Assert.assertArrayEquals
import org.junit.Assert.assertEquals
import org.junit.Assert.assertNull
import org.junit.Test

class InputGeometryTest {
    @Test
    fun aPhotoIsScaledToTheCapAndRoundedToTheMultiple() {
        assertEquals(Size(1024, 768), InputGeometry.flexibleSize(4032, 3024, 4, 1024))
        assertEquals(Size(768, 1024), InputGeometry.flexibleSize(3024, 4032, 4, 1024))
        // 4000 x 1800 at 1024: 1024 x 460.8 -> 460 (a multiple of 4)
        assertEquals(Size(1024, 460), InputGeometry.flexibleSize(4000, 1800, 4, 1024))
        assertEquals(Size(512, 384), InputGeometry.flexibleSize(4032, 3024, 4, 512))
    }

    @Test
    fun aSmallPhotoIsNotScaledUpOnlyRoundedDown() {
        assertEquals(Size(640, 480), InputGeometry.flexibleSize(640, 480, 4, 1024))
        assertEquals(Size(1000, 748), InputGeometry.flexibleSize(1000, 750, 4, 1024))
        assertEquals(Size(1000, 744), InputGeometry.flexibleSize(1000, 750, 8, 1024))
        // never below one multiple
        assertEquals(Size(8, 4), InputGeometry.flexibleSize(9, 2, 4, 1024))
    }

    @Test
    fun theCapIsAConstantAndSizesAreMultiples() {
        assertEquals(1024, InputGeometry.MAX_LONG_SIDE)
        assertEquals(4, InputGeometry.DEFAULT_SIZE_MULTIPLE)
        for ((w, h) in listOf(4032 to 3024, 1080 to 2400, 333 to 777, 5 to 5)) {
            val s = InputGeometry.flexibleSize(w, h, 4)
            assertEquals(0, s.width % 4)
            assertEquals(0, s.height % 4)
            assertEquals(true, maxOf(s.width, s.height) <= 1024)
        }
    }

    @Test
    fun commonSizeTakesTheFixedSizeOrTheLcmOfMultiples() {
        val fixed = SizeRule.Fixed(Size(256, 256))
        assertEquals(Size(256, 256), InputGeometry.commonSize(4032, 3024, listOf(fixed, SizeRule.Flexible(4))))
        assertNull(InputGeometry.commonSize(4032, 3024, listOf(fixed, SizeRule.Fixed(Size(128, 128)))))
        // multiples 4 and 6 -> 12: 1000 x 750 -> 996 x 744
        assertEquals(Size(996, 744), InputGeometry.commonSize(1000, 750, listOf(SizeRule.Flexible(4), SizeRule.Flexible(6))))
        assertEquals(12, InputGeometry.lcm(4, 6))
    }

    @Test
    fun centreCropKeepsTheTargetAspectAndNeverStretches() {
        // A 4:3 landscape photo into a square model: the centred square.
        assertEquals(CropRect(504, 0, 3024, 3024), InputGeometry.centreCrop(4032, 3024, Size(256, 256)))
        // A portrait photo into a square: cut top and bottom.
        assertEquals(CropRect(0, 420, 1080, 1080), InputGeometry.centreCrop(1080, 1920, Size(64, 64)))
        // Same aspect: the whole photo.
        assertEquals(CropRect(0, 0, 4032, 3024), InputGeometry.centreCrop(4032, 3024, Size(1024, 768)))
        // 1000 x 750 into 1000 x 748: two rows off, one at the top and one at the bottom.
        assertEquals(CropRect(0, 1, 1000, 748), InputGeometry.centreCrop(1000, 750, Size(1000, 748)))
    }

    @Test
    fun sampleSizeKeepsTheLongSideAboveWhatIsWanted() {
        assertEquals(2, InputGeometry.sampleSize(4032, 3024, 1024)) // 2016 px
        assertEquals(1, InputGeometry.sampleSize(1500, 1000, 1024))
        assertEquals(8, InputGeometry.sampleSize(8192, 6144, 1024)) // exactly 1024
    }

    @Test
    fun exifOrientationMapsToRotationAndMirror() {
        val expected = mapOf(
            1 to Orientation(0, false),
            2 to Orientation(0, true),
            3 to Orientation(180, false),
            4 to Orientation(180, true),
            5 to Orientation(270, true),
            6 to Orientation(90, false),
            7 to Orientation(90, true),
            8 to Orientation(270, false),
            0 to Orientation.UPRIGHT,
            9 to Orientation.UPRIGHT,
        )
        for ((code, o) in expected) assertEquals("EXIF $code", o, InputGeometry.exifOrientation(code))
    }

    // A 3 x 2 image, stored row-major:  a b c
    //                                    d e f
    private val stored = intArrayOf(1, 2, 3, 4, 5, 6)

    private fun oriented(code: Int): Pair<List<Int>, Size> {
        val (px, size) = InputGeometry.orient(stored, 3, 2, InputGeometry.exifOrientation(code))
        return px.toList() to size
    }

    @Test
    fun orientationSixTurnsASidewaysPhotoUpright() {
        // Rotate 90 clockwise: d a / e b / f c
        assertEquals(listOf(4, 1, 5, 2, 6, 3) to Size(2, 3), oriented(6))
    }

    @Test
    fun everyOrientationMovesThePixelsAsTheExifSpecSays() {
        assertEquals(listOf(1, 2, 3, 4, 5, 6) to Size(3, 2), oriented(1))
        assertEquals(listOf(3, 2, 1, 6, 5, 4) to Size(3, 2), oriented(2)) // mirror
        assertEquals(listOf(6, 5, 4, 3, 2, 1) to Size(3, 2), oriented(3)) // 180
        assertEquals(listOf(4, 5, 6, 1, 2, 3) to Size(3, 2), oriented(4)) // flip vertical
        assertEquals(listOf(1, 4, 2, 5, 3, 6) to Size(2, 3), oriented(5)) // transpose
        assertEquals(listOf(6, 3, 5, 2, 4, 1) to Size(2, 3), oriented(7)) // transverse
        assertEquals(listOf(3, 6, 2, 5, 1, 4) to Size(2, 3), oriented(8)) // 270 clockwise
    }

    @Test
    fun orientKeepsEveryPixel() {
        val px = IntArray(12) { it }
        for (code in 1..8) {
            val (out, _) = InputGeometry.orient(px, 4, 3, InputGeometry.exifOrientation(code))
            assertArrayEquals(px, out.sortedArray())
        }
    }
}
