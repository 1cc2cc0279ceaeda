package dev.dmad.demo

import org.junit.Assert.assertEquals
import org.junit.Assert.assertTrue
import org.junit.Test

class ReportTest {
    private val spec: ModelSpec = ModelSpecParser.parse(Doc.of(Doc.full, Doc.compressed()))
    private val compressedEntry: ModelEntry = spec.byLabel("compressed")!!
    private val fullEntry: ModelEntry = spec.byLabel("full")!!

    private fun contains(text: String, vararg needles: String) {
        for (n in needles) assertTrue("'$n' not in:\n$text", text.contains(n))
    }

    @Test
    fun filesByAcceleratorSaysWhichFileRunsWhereAndFlagsTheFloor() {
        assertEquals(
            listOf("CPU/NNAPI: compressed.tflite (int8)", "GPU: compressed_gpu.tflite (fp16) BELOW its PSNR floor"),
            Report.filesByAccelerator(compressedEntry),
        )
        assertEquals(listOf("CPU/GPU/NNAPI: full.tflite (fp32)"), Report.filesByAccelerator(fullEntry))
    }

    @Test
    fun modelInfoShowsChosenBecauseAndTheGpuCheck() {
        contains(
            Report.modelInfo(compressedEntry, picked = false),
            "chosen because: int8 met its floor",
            "GPU delegate check (tf.lite.experimental.Analyzer, a host-side check of the op set, not a run on a phone): NOT compatible; issues: MIRROR_PAD",
            "compressed_gpu.tflite: parity 24.0 dB PSNR; chosen because: fp16 runs on phone GPUs",
            "30.5 dB PSNR",
            "any size that is a multiple of 4",
        )
    }

    private fun arms(result: AbResult) = listOf(
        ArmReport("full", fullEntry.main, "CPU (XNNPACK), 4 thread(s)", Size(1024, 768), 12.0, result.summary(0)),
        ArmReport("compressed", compressedEntry.main, "CPU (XNNPACK), 4 thread(s)", Size(1024, 768), 3.0, result.summary(1)),
    )

    @Test
    fun compareTextGivesMediansAndSaysTheSpeedupIsPaired() {
        val result = AbResult(2, 3, 3, listOf(doubleArrayOf(100.0, 300.0, 120.0), doubleArrayOf(50.0, 100.0, 30.0)), false)
        val text = Report.compare(RunSetting(Accelerator.CPU, 4), arms(result), result)
        contains(
            text,
            "CPU, 4 threads; 3 warm-up round(s), then 3 alternating round(s) (full, compressed)",
            "full (full.tflite (fp32), 1024×768): median 120.00 ms (min 100.00, max 300.00, 3 runs)",
            "compressed (compressed.tflite (int8), 1024×768): median 50.00 ms",
            "speed-up full/compressed: ×3.00 (paired: median of 3 per-round ratios; ratio of medians ×2.40)",
        )
        assertTrue(!text.contains("inputs differ"))
    }

    @Test
    fun tableHasOneLinePerAcceleratorAndTheFileEachRan() {
        val result = AbResult(2, 3, 2, listOf(doubleArrayOf(10.0, 12.0), doubleArrayOf(5.0, 4.0)), false)
        val gpuArms = listOf(
            ArmReport("full", fullEntry.fileFor(Accelerator.GPU), "GPU delegate applied", Size(256, 256), 900.0, result.summary(0)),
            ArmReport("compressed", compressedEntry.fileFor(Accelerator.GPU), "GPU delegate applied", Size(256, 256), 800.0, result.summary(1)),
        )
        val rows = listOf(
            TableRow(RunSetting(Accelerator.GPU, 4), gpuArms, result, null),
            TableRow(RunSetting(Accelerator.NNAPI, 4), emptyList(), null, "NNAPI failed"),
        )
        val text = Report.table(rows, listOf(RunSetting(Accelerator.CPU, 1)), listOf("full", "compressed"))
        val lines = text.lines()
        assertTrue(lines[0], lines[0].startsWith("accelerator") && lines[0].contains("speed-up"))
        assertTrue(lines[1], lines[1].startsWith("GPU") && lines[1].contains("11.0") && lines[1].contains("4.5") && lines[1].contains("×2.50"))
        assertTrue(lines[2], lines[2].startsWith("NNAPI") && lines[2].contains("failed"))
        assertTrue(lines[3], lines[3].startsWith("CPU, 1 thread") && lines[3].contains("…"))
        contains(text, "compressed: compressed_gpu.tflite (fp16) BELOW its PSNR floor, 256×256", "median of per-round ratios", "NNAPI failed")
    }
}
