package dev.dmad.demo

/** One run of an A/B measurement: [arm] 0 is A (full), 1 is B (compressed); [round] counts within its phase. */
data class AbStep(val arm: Int, val round: Int, val timed: Boolean)

/** What an A/B measurement gave: per arm, the times of the complete timed rounds, in ms. */
class AbResult(
    val arms: Int,
    val warmupRounds: Int,
    val plannedRounds: Int,
    val times: List<DoubleArray>,
    val cancelled: Boolean,
) {
    /** Timed rounds in which every arm ran. */
    val completedRounds: Int get() = times.minOfOrNull { it.size } ?: 0

    fun summary(arm: Int): LatencySummary? = times[arm].takeIf { it.isNotEmpty() }?.let { LatencySummary.of(it) }

    /** Median over rounds of time(A) / time(B); null without two arms and one complete round. */
    val pairedSpeedup: Double?
        get() = if (arms == 2 && completedRounds > 0) Latency.pairedSpeedup(times[0], times[1]) else null

    val ratioOfMedians: Double?
        get() = if (arms == 2 && completedRounds > 0) Latency.ratioOfMedians(times[0], times[1]) else null
}

/**
 * Alternating A/B runs: warm-up rounds, then timed rounds, each round running A then B
 * (full, compressed, full, compressed, ...), so both models see the same phone state (clock,
 * temperature, background load) round by round and the speed-up can be taken per round.
 */
object AbSchedule {
    const val WARMUP_ROUNDS = 3
    const val TIMED_ROUNDS = 10

    fun plan(arms: Int, warmupRounds: Int, timedRounds: Int): List<AbStep> {
        require(arms >= 1 && warmupRounds >= 0 && timedRounds >= 1)
        val warm = (0 until warmupRounds).flatMap { r -> (0 until arms).map { AbStep(it, r, timed = false) } }
        val timed = (0 until timedRounds).flatMap { r -> (0 until arms).map { AbStep(it, r, timed = true) } }
        return warm + timed
    }

    /**
     * Runs [arms] (each returns the time of one run, in ms) by [plan]. Stops early when [cancel]
     * is cancelled (between runs, or by a run throwing [CancelledException]); a round that was cut
     * short is dropped, so the arms stay paired. [progress] gets (runs done, runs planned).
     * Any other exception of a run propagates.
     */
    fun run(
        arms: List<() -> Double>,
        warmupRounds: Int,
        timedRounds: Int,
        cancel: CancelToken,
        progress: (done: Int, total: Int) -> Unit = { _, _ -> },
    ): AbResult {
        val steps = plan(arms.size, warmupRounds, timedRounds)
        val times = List(arms.size) { ArrayList<Double>() }
        var cancelled = false
        for ((k, step) in steps.withIndex()) {
            if (cancel.isCancelled) {
                cancelled = true
                break
            }
            val t = try {
                arms[step.arm]()
            } catch (e: CancelledException) {
                cancelled = true
                break
            }
            if (step.timed) times[step.arm] += t
            progress(k + 1, steps.size)
        }
        val complete = times.minOf { it.size }
        return AbResult(arms.size, warmupRounds, timedRounds, times.map { it.take(complete).toDoubleArray() }, cancelled)
    }
}
