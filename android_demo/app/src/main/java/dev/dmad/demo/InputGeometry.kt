package dev.dmad.demo

/** A width and height in pixels. */
data class Size(val width: Int, val height: Int) {
    override fun toString(): String = "${width}×$height"
}

/** A rectangle of the source image, in its pixels. */
data class CropRect(val left: Int, val top: Int, val width: Int, val height: Int)

/** How a model takes its input size. */
sealed interface SizeRule {
    /** Only its own input size (model.json's shape). */
    data class Fixed(val size: Size) : SizeRule

    /** Any height and width that are multiples of [multiple] (a fully convolutional model). */
    data class Flexible(val multiple: Int) : SizeRule
}

/**
 * EXIF orientation as what to do to the stored pixels to show the photo upright: mirror left to
 * right first when [mirror], then rotate clockwise by [degrees].
 */
data class Orientation(val degrees: Int, val mirror: Boolean) {
    val swapsSides: Boolean get() = degrees == 90 || degrees == 270

    companion object {
        val UPRIGHT = Orientation(0, false)
    }
}

/**
 * The pure geometry of getting a photo into a model: which input size, which part of the photo
 * (centre crop, never a stretch), how to decode it subsampled, and EXIF orientation.
 */
object InputGeometry {
    /** A fully convolutional dmad generator takes sides that are multiples of 4 (two stride-2 stages). */
    const val DEFAULT_SIZE_MULTIPLE = 4

    /** The longest side the app feeds a fully convolutional model by default. */
    const val MAX_LONG_SIDE = 1024

    /**
     * The photo's own size for a model that takes any multiple of [multiple]: scaled down (never
     * up) so its long side is at most [maxLongSide], then each side rounded down to a multiple
     * (at least one multiple). The aspect ratio changes by less than one multiple per side; the
     * caller centre-crops the photo to that aspect ([centreCrop]).
     */
    fun flexibleSize(width: Int, height: Int, multiple: Int, maxLongSide: Int = MAX_LONG_SIDE): Size {
        require(width >= 1 && height >= 1 && multiple >= 1 && maxLongSide >= multiple)
        val scale = minOf(1.0, maxLongSide.toDouble() / maxOf(width, height))
        fun side(v: Int): Int = maxOf(multiple, (Math.floor(v * scale + 1e-9).toInt() / multiple) * multiple)
        return Size(side(width), side(height))
    }

    /**
     * One input size for every model of a comparison, or null when two models only take their
     * own, different sizes. A fixed size wins (the flexible models take it too); otherwise the
     * photo's size with the least common multiple of the models' multiples.
     */
    fun commonSize(width: Int, height: Int, rules: List<SizeRule>, maxLongSide: Int = MAX_LONG_SIDE): Size? {
        require(rules.isNotEmpty())
        val fixed = rules.filterIsInstance<SizeRule.Fixed>().map { it.size }.distinct()
        if (fixed.size > 1) return null
        if (fixed.size == 1) return fixed[0]
        val multiple = rules.map { (it as SizeRule.Flexible).multiple }.reduce(::lcm)
        return flexibleSize(width, height, multiple, maxOf(maxLongSide, multiple))
    }

    /** The largest centred rectangle of a [width] x [height] image with the aspect ratio of [target]. */
    fun centreCrop(width: Int, height: Int, target: Size): CropRect {
        require(width >= 1 && height >= 1)
        val wide = width.toLong() * target.height > height.toLong() * target.width
        val cw = if (wide) Math.round(height.toDouble() * target.width / target.height).toInt() else width
        val ch = if (wide) height else Math.round(width.toDouble() * target.height / target.width).toInt()
        val w = cw.coerceIn(1, width)
        val h = ch.coerceIn(1, height)
        return CropRect((width - w) / 2, (height - h) / 2, w, h)
    }

    /**
     * BitmapFactory's inSampleSize: the largest power of two that keeps the decoded long side at
     * least [wantedLongSide] (a 50 MP photo is not decoded whole for a 1024 px input).
     */
    fun sampleSize(width: Int, height: Int, wantedLongSide: Int): Int {
        var sample = 1
        while (maxOf(width, height) / (sample * 2) >= wantedLongSide) sample *= 2
        return sample
    }

    /** EXIF `Orientation` tag (1..8, JEITA CP-3451C) -> what shows the photo upright; other values: as stored. */
    fun exifOrientation(code: Int): Orientation = when (code) {
        2 -> Orientation(0, true) // flip horizontal
        3 -> Orientation(180, false)
        4 -> Orientation(180, true) // flip vertical
        5 -> Orientation(270, true) // transpose
        6 -> Orientation(90, false)
        7 -> Orientation(90, true) // transverse
        8 -> Orientation(270, false)
        else -> Orientation.UPRIGHT // 1 (normal), 0 (undefined), anything else
    }

    /**
     * Applies [o] to row-major ARGB [pixels] of a [width] x [height] image; returns the new
     * pixels (row-major) and size.
     */
    fun orient(pixels: IntArray, width: Int, height: Int, o: Orientation): Pair<IntArray, Size> {
        require(pixels.size == width * height)
        val outW = if (o.swapsSides) height else width
        val outH = if (o.swapsSides) width else height
        val out = IntArray(pixels.size)
        for (y in 0 until height) {
            for (x0 in 0 until width) {
                val x = if (o.mirror) width - 1 - x0 else x0
                // (x, y) after the mirror; rotate clockwise.
                val (nx, ny) = when (o.degrees) {
                    90 -> Pair(height - 1 - y, x)
                    180 -> Pair(width - 1 - x, height - 1 - y)
                    270 -> Pair(y, width - 1 - x)
                    else -> Pair(x, y)
                }
                out[ny * outW + nx] = pixels[y * width + x0]
            }
        }
        return out to Size(outW, outH)
    }

    fun lcm(a: Int, b: Int): Int = a / gcd(a, b) * b

    private tailrec fun gcd(a: Int, b: Int): Int = if (b == 0) a else gcd(b, a % b)
}
