package dev.dmad.demo

import java.util.Locale

/** One model's part of a measurement: the file that ran, how (status), at which size, and its latencies. */
data class ArmReport(
    val label: String,
    val file: ModelFile,
    val status: String,
    val size: Size,
    /** Interpreter creation, delegate preparation included (GPU kernel compilation, or its cache). */
    val openMs: Double,
    val summary: LatencySummary?,
)

/** One row of the accelerator table; [error] when the row could not be measured. */
data class TableRow(val setting: RunSetting, val arms: List<ArmReport>, val result: AbResult?, val error: String?)

/** The text the app shows, built from measurements (pure, so the JVM unit tests read it too). */
object Report {
    fun fmt(format: String, vararg args: Any): String = String.format(Locale.US, format, *args)

    /** "compressed_gpu.tflite (fp16)", with a warning when the file is below its PSNR floor. */
    fun fileLabel(f: ModelFile): String = buildString {
        append(f.file)
        f.variant?.let { append(" (").append(it).append(')') }
        if (f.belowFloor == true) append(" BELOW its PSNR floor")
    }

    /** Which file runs on which accelerator, one line per distinct file. */
    fun filesByAccelerator(entry: ModelEntry): List<String> =
        Accelerator.entries.groupBy { entry.fileFor(it) }.map { (file, accs) ->
            accs.joinToString("/") { it.label } + ": " + fileLabel(file)
        }

    fun parity(f: ModelFile): String = listOfNotNull(
        (f.parity["psnr_db"] as? Number)?.let { fmt("%.1f dB PSNR", it.toDouble()) },
        (f.parity["max_abs"] as? Number)?.let { fmt("max |err| %.2g", it.toDouble()) },
    ).joinToString(", ").ifEmpty { "not reported" }

    fun gpuCheck(g: GpuCheck?): String? {
        if (g == null) return null
        val verdict = when (g.compatible) {
            true -> "compatible"
            false -> "NOT compatible"
            null -> "no verdict"
        }
        val issues = if (g.issues.isEmpty()) "" else "; issues: " + g.issues.take(MAX_ISSUES).joinToString("; ")
        val by = g.checker?.let { " ($it, a host-side check of the op set, not a run on a phone)" } ?: ""
        return "GPU delegate check$by: $verdict$issues"
    }

    /** What the app knows about one model before it runs it. */
    fun modelInfo(entry: ModelEntry, picked: Boolean): String = buildString {
        append(entry.label).append(": ")
        append(if (picked) "picked file " else "").append(fileLabel(entry.main)).append('\n')
        append(fmt("%s %s in / %s out", entry.input.let { Size(it.width, it.height) }, entry.input.dtype, entry.output.dtype))
        when {
            entry.sizeMultiple != null -> append(fmt(", any size that is a multiple of %d", entry.sizeMultiple))
            else -> append(", other sizes tried with a multiple of ${InputGeometry.DEFAULT_SIZE_MULTIPLE}")
        }
        append('\n')
        if (picked) {
            append("I/O read from the interpreter; assumes dmad's pixel mapping ([-1, 1])\n")
        } else {
            append(fmt("%.3f GMACs (true), %.3f (paper), %,d params", entry.macsTrue / 1e9, entry.macsPaper / 1e9, entry.params))
            append('\n')
            append("parity vs PyTorch: ").append(parity(entry.main)).append('\n')
            entry.main.chosenBecause?.let { append("chosen because: ").append(it).append('\n') }
            for (line in filesByAccelerator(entry)) append("  ").append(line).append('\n')
            for (f in entry.extraFiles) {
                append("  ").append(f.file).append(": parity ").append(parity(f))
                f.chosenBecause?.let { append("; chosen because: ").append(it) }
                append('\n')
            }
            gpuCheck(entry.gpuDelegate)?.let { append(it).append('\n') }
            append("from ").append(entry.sourceRun)
        }
    }.trimEnd()

    fun latency(s: LatencySummary?): String =
        if (s == null) "no complete run" else fmt("median %.2f ms (min %.2f, max %.2f, %d runs)", s.medianMs, s.minMs, s.maxMs, s.runs)

    /** The speed-up line: the paired median, said to be one, with the ratio of medians next to it. */
    fun speedup(result: AbResult, reference: String, candidate: String): String {
        val paired = result.pairedSpeedup ?: return "speed-up: needs both models and one complete round"
        return fmt(
            "speed-up %s/%s: ×%.2f (paired: median of %d per-round ratios; ratio of medians ×%.2f)",
            reference, candidate, paired, result.completedRounds, result.ratioOfMedians ?: Double.NaN,
        )
    }

    /** The compare screen's text under the two outputs. */
    fun compare(setting: RunSetting, arms: List<ArmReport>, result: AbResult): String = buildString {
        append(
            fmt(
                "%s; %d warm-up round(s), then %d alternating round(s) (%s)%s\n",
                setting.label, result.warmupRounds, result.completedRounds,
                arms.joinToString(", ") { it.label }, if (result.cancelled) ", CANCELLED" else "",
            ),
        )
        for (a in arms) {
            append(a.label).append(" (").append(fileLabel(a.file)).append(", ").append(a.size.toString()).append("): ")
            append(latency(a.summary)).append('\n')
            append("  ").append(a.status.replace("\n", "\n  ")).append('\n')
            append(fmt("  interpreter + delegate set-up %.0f ms (not in the latency)\n", a.openMs))
        }
        if (arms.size == 2) {
            append(speedup(result, arms[0].label, arms[1].label)).append('\n')
            if (arms[0].size != arms[1].size) {
                append("inputs differ (${arms[0].size} vs ${arms[1].size}): the speed-up compares different work\n")
            }
        }
    }.trimEnd()

    /** The accelerator table, in a fixed-width font: one line per row, then the notes. */
    fun table(rows: List<TableRow>, pending: List<RunSetting>, labels: List<String>): String = buildString {
        val head = listOf("accelerator") + labels.map { "$it ms" } + if (labels.size == 2) listOf("speed-up") else emptyList()
        append(line(head)).append('\n')
        for (r in rows) {
            val cells = mutableListOf(r.setting.label)
            if (r.error != null || r.result == null) {
                cells += "failed"
            } else {
                for (i in labels.indices) cells += r.result.summary(i)?.let { fmt("%.1f", it.medianMs) } ?: "-"
                if (labels.size == 2) cells += r.result.pairedSpeedup?.let { fmt("×%.2f", it) } ?: "-"
                if (r.result.cancelled) cells += "(cancelled)"
            }
            append(line(cells)).append('\n')
        }
        for (p in pending) append(line(listOf(p.label, "…"))).append('\n')
        append("medians over alternating rounds; speed-up = median of per-round ratios\n")
        for (r in rows) {
            append('\n').append(r.setting.label).append(":\n")
            r.error?.let { append("  ").append(it.replace("\n", "\n  ")).append('\n') }
            for (a in r.arms) {
                append("  ").append(a.label).append(": ").append(fileLabel(a.file)).append(", ").append(a.size.toString())
                append(fmt(", set-up %.0f ms\n", a.openMs))
                append("    ").append(a.status.replace("\n", "\n    ")).append('\n')
            }
        }
    }.trimEnd()

    private fun line(cells: List<String>): String =
        cells.mapIndexed { i, c -> if (i == 0) c.padEnd(FIRST_COLUMN) else c.padStart(COLUMN) }.joinToString(" ")

    private const val MAX_ISSUES = 3
    private const val FIRST_COLUMN = 18
    private const val COLUMN = 13
}
