package dev.dmad.demo

import android.content.Context
import android.os.Build
import org.tensorflow.lite.DataType
import org.tensorflow.lite.Delegate
import org.tensorflow.lite.Interpreter
import org.tensorflow.lite.Tensor
import org.tensorflow.lite.gpu.CompatibilityList
import org.tensorflow.lite.gpu.GpuDelegate
import org.tensorflow.lite.nnapi.NnApiDelegate
import org.tensorflow.lite.support.common.FileUtil
import java.io.Closeable
import java.io.IOException
import java.nio.ByteBuffer
import java.nio.ByteOrder
import java.nio.MappedByteBuffer

enum class Accelerator(val label: String) {
    CPU("CPU"),
    GPU("GPU"),
    NNAPI("NNAPI"),
}

/** Latency of Interpreter.run alone (no pre/post-processing), in milliseconds. */
data class Timing(val warmupRuns: Int, val timedRuns: Int, val meanMs: Double, val minMs: Double, val maxMs: Double)

class RunResult(
    val pixels: IntArray,
    val width: Int,
    val height: Int,
    val timing: Timing,
    val prePostMs: Double,
)

/**
 * One model loaded on one accelerator. Create, run and close it on ONE thread: the GPU delegate
 * is bound to the thread that created it.
 *
 * [status] says what actually runs the model, including every fallback to the CPU.
 */
class GeneratorRunner private constructor(
    val entry: ModelEntry,
    private val interpreter: Interpreter,
    private val delegate: Delegate?,
    val status: String,
) : Closeable {
    private val input = ByteBuffer.allocateDirect(entry.input.byteCount).order(ByteOrder.nativeOrder())
    private val output = ByteBuffer.allocateDirect(entry.output.byteCount).order(ByteOrder.nativeOrder())

    /**
     * [pixels]: ARGB, already resized to the model's input size. Runs [warmupRuns] untimed
     * invocations, then [timedRuns] timed ones on the same input; returns the last output.
     */
    fun run(pixels: IntArray, warmupRuns: Int = WARMUP_RUNS, timedRuns: Int = TIMED_RUNS): RunResult {
        require(pixels.size == entry.input.pixelCount) {
            "expected ${entry.input.pixelCount} pixels, got ${pixels.size}"
        }
        require(timedRuns >= 1 && warmupRuns >= 0)
        val preStart = System.nanoTime()
        PixelMapping.writeInput(pixels, input, entry.input.quantization)
        val preNs = System.nanoTime() - preStart
        repeat(warmupRuns) { invoke() }
        val times = DoubleArray(timedRuns) {
            val start = System.nanoTime()
            invoke()
            (System.nanoTime() - start) / 1e6
        }
        val postStart = System.nanoTime()
        val out = PixelMapping.readOutput(output, entry.output.pixelCount, entry.output.quantization)
        val postNs = System.nanoTime() - postStart
        val timing = Timing(warmupRuns, timedRuns, times.average(), times.min(), times.max())
        return RunResult(out, entry.output.width, entry.output.height, timing, (preNs + postNs) / 1e6)
    }

    private fun invoke() {
        input.rewind()
        output.rewind()
        interpreter.run(input, output)
    }

    override fun close() {
        interpreter.close()
        closeQuietly(delegate)
    }

    companion object {
        const val WARMUP_RUNS = 3
        const val TIMED_RUNS = 10

        /**
         * Loads [entry]'s model from assets on [accelerator] and checks it against model.json.
         * Throws [ModelSpecException] (a message for the user) when the model is missing,
         * unreadable, or disagrees with model.json. A delegate that cannot be created or that
         * rejects the model is not an error: the model runs on the CPU and [status] says so.
         */
        fun open(context: Context, entry: ModelEntry, accelerator: Accelerator, threads: Int): GeneratorRunner {
            val model = loadModel(context, entry.file)
            val notes = mutableListOf<String>()
            var delegate: Delegate? = when (accelerator) {
                Accelerator.CPU -> null
                Accelerator.GPU -> createGpuDelegate(notes)
                Accelerator.NNAPI -> createNnApiDelegate(notes)
            }
            var interpreter: Interpreter? = null
            if (delegate != null) {
                try {
                    interpreter = Interpreter(model, Interpreter.Options().setNumThreads(threads).addDelegate(delegate))
                    notes += "${accelerator.label} delegate applied; operators it does not support run on " +
                        "the CPU ($threads thread(s)), which the Interpreter API does not report"
                } catch (e: Exception) {
                    closeQuietly(delegate)
                    delegate = null
                    notes += "${accelerator.label} delegate rejected the model (${firstLine(e)}): FELL BACK TO CPU"
                }
            }
            val itp: Interpreter
            if (interpreter != null) {
                itp = interpreter
            } else {
                itp = try {
                    Interpreter(model, Interpreter.Options().setNumThreads(threads))
                } catch (e: Exception) {
                    throw ModelSpecException("${entry.file} could not be loaded: ${firstLine(e)}")
                }
                notes += "CPU (XNNPACK), $threads thread(s)"
            }
            try {
                ModelSpecParser.checkAgainstModel(
                    entry,
                    (0 until itp.inputTensorCount).map { info(itp.getInputTensor(it)) },
                    (0 until itp.outputTensorCount).map { info(itp.getOutputTensor(it)) },
                )
            } catch (e: ModelSpecException) {
                itp.close()
                closeQuietly(delegate)
                throw e
            }
            return GeneratorRunner(entry, itp, delegate, notes.joinToString("\n"))
        }

        private fun loadModel(context: Context, file: String): MappedByteBuffer {
            val present = try {
                context.assets.list("")?.contains(file) == true
            } catch (e: IOException) {
                false
            }
            if (!present) {
                throw ModelSpecException(
                    "model.json names $file, but it is not in the app's assets " +
                        "(run dmad export --android or make android-assets, then rebuild)",
                )
            }
            return try {
                FileUtil.loadMappedFile(context, file)
            } catch (e: IOException) {
                throw ModelSpecException(
                    "$file could not be memory-mapped (${firstLine(e)}); it must be stored " +
                        "uncompressed: keep androidResources.noCompress += \"tflite\"",
                )
            }
        }

        private fun createGpuDelegate(notes: MutableList<String>): Delegate? = try {
            val compatibility = CompatibilityList()
            if (compatibility.isDelegateSupportedOnThisDevice) {
                GpuDelegate(compatibility.bestOptionsForThisDevice)
            } else {
                notes += "GPU delegate is not supported on this device: FELL BACK TO CPU"
                null
            }
        } catch (e: Exception) {
            notes += "GPU delegate could not be created (${firstLine(e)}): FELL BACK TO CPU"
            null
        } catch (e: LinkageError) {
            notes += "GPU delegate library is missing (${firstLine(e)}): FELL BACK TO CPU"
            null
        }

        private fun createNnApiDelegate(notes: MutableList<String>): Delegate? {
            if (Build.VERSION.SDK_INT >= 35) {
                notes += "NNAPI is deprecated since Android 15; drivers may run it on their CPU reference code"
            }
            return try {
                NnApiDelegate()
            } catch (e: Exception) {
                notes += "NNAPI delegate could not be created (${firstLine(e)}): FELL BACK TO CPU"
                null
            } catch (e: LinkageError) {
                notes += "NNAPI delegate library is missing (${firstLine(e)}): FELL BACK TO CPU"
                null
            }
        }

        private fun info(tensor: Tensor): TensorInfo {
            val q = tensor.quantizationParams()
            val dtype = when (tensor.dataType()) {
                DataType.FLOAT32 -> "float32"
                DataType.INT8 -> "int8"
                else -> tensor.dataType().name.lowercase()
            }
            return TensorInfo(tensor.shape().toList(), dtype, q.scale, q.zeroPoint)
        }

        private fun firstLine(e: Throwable): String =
            (e.message ?: e.javaClass.simpleName).lineSequence().first().take(200)

        private fun closeQuietly(delegate: Delegate?) {
            try {
                (delegate as? AutoCloseable)?.close()
            } catch (e: Exception) {
                // Nothing useful to do: the delegate is being dropped anyway.
            }
        }
    }
}
