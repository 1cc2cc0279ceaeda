package dev.dmad.demo

/** Latencies of one model in one measurement, in milliseconds. */
data class LatencySummary(val runs: Int, val medianMs: Double, val minMs: Double, val maxMs: Double) {
    companion object {
        fun of(timesMs: DoubleArray): LatencySummary =
            LatencySummary(timesMs.size, Latency.median(timesMs), timesMs.min(), timesMs.max())
    }
}

/**
 * The statistics the app reports, as the benchmark harness does: medians, not means (one slow run,
 * a GC pause or a thermal step, moves a mean but hardly a median).
 */
object Latency {
    /** The median; for an even count, the mean of the two middle values. */
    fun median(values: DoubleArray): Double {
        require(values.isNotEmpty()) { "median of no values" }
        val s = values.sortedArray()
        val mid = s.size / 2
        return if (s.size % 2 == 1) s[mid] else (s[mid - 1] + s[mid]) / 2.0
    }

    /**
     * Paired speed-up of [candidate] over [reference]: the median over rounds of
     * reference[i] / candidate[i], where round i ran both back to back. Drift over the
     * measurement (thermal throttling, another app waking up) hits both runs of a round alike, so
     * this is steadier than [ratioOfMedians].
     */
    fun pairedSpeedup(reference: DoubleArray, candidate: DoubleArray): Double {
        require(reference.size == candidate.size) { "paired runs differ in count: ${reference.size} vs ${candidate.size}" }
        require(reference.isNotEmpty()) { "no paired runs" }
        require(candidate.all { it > 0.0 }) { "a run took no time" }
        return median(DoubleArray(reference.size) { reference[it] / candidate[it] })
    }

    /** median(reference) / median(candidate): shown next to the paired figure for comparison. */
    fun ratioOfMedians(reference: DoubleArray, candidate: DoubleArray): Double = median(reference) / median(candidate)
}
