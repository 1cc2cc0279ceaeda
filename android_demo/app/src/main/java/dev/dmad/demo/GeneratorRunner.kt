package dev.dmad.demo

import android.os.Build
import org.tensorflow.lite.DataType
import org.tensorflow.lite.Delegate
import org.tensorflow.lite.Interpreter
import org.tensorflow.lite.Tensor
import org.tensorflow.lite.gpu.CompatibilityList
import org.tensorflow.lite.gpu.GpuDelegate
import org.tensorflow.lite.gpu.GpuDelegateFactory
import org.tensorflow.lite.nnapi.NnApiDelegate
import java.io.Closeable
import java.io.File
import java.nio.ByteBuffer
import java.nio.ByteOrder
import java.util.concurrent.atomic.AtomicBoolean

/** Where the GPU delegate keeps its serialized kernels, and the model's digest for the cache token. */
class GpuCache(val dir: File, val modelDigest: String)

/**
 * One model file loaded on one accelerator at one input size. Create, run and close it on ONE
 * thread: the GPU delegate is bound to the thread that created it.
 *
 * [status] says what actually runs the model, including every fallback to the CPU; [size] is
 * the input size it runs at (the wanted one, or the model's own when resizing failed).
 */
class GeneratorRunner private constructor(
    val file: ModelFile,
    private val interpreter: Interpreter,
    private val delegate: Delegate?,
    val status: String,
    val size: Size,
    val openMs: Double,
) : Closeable {
    private val input = buffer(size, file.input.quantization)
    private val output = buffer(size, file.output.quantization)
    private val interrupted = AtomicBoolean(false)

    /** [pixels]: ARGB, row-major, [size]. Fills the input tensor buffer; returns the time taken in ms. */
    fun setInput(pixels: IntArray): Double {
        require(pixels.size == size.width * size.height) { "expected ${size.width * size.height} pixels, got ${pixels.size}" }
        val start = System.nanoTime()
        PixelMapping.writeInput(pixels, input, file.input.quantization)
        return (System.nanoTime() - start) / 1e6
    }

    /** One timed Interpreter.run on the current input, in ms; [cancel] interrupts it between operators. */
    fun timedRun(cancel: CancelToken): Double {
        cancel.check()
        if (interrupted.getAndSet(false)) interpreter.setCancelled(false)
        input.rewind()
        output.rewind()
        return try {
            cancel.whileRunning({ interrupted.set(true); interpreter.setCancelled(true) }) {
                val start = System.nanoTime()
                interpreter.run(input, output)
                (System.nanoTime() - start) / 1e6
            }
        } catch (e: RuntimeException) {
            // A cancelled Invoke() ends in an IllegalArgumentException ("Client requested cancel").
            if (cancel.isCancelled) throw CancelledException()
            throw e
        }
    }

    /** The last output as ARGB pixels, row-major, [size]. */
    fun outputPixels(): IntArray = PixelMapping.readOutput(output, size.width * size.height, file.output.quantization)

    override fun close() {
        interpreter.close()
        closeQuietly(delegate)
    }

    companion object {
        /**
         * Loads [model] (the bytes of [file]) on [setting] and checks it against model.json's
         * tensors for that file, then resizes its input to [wanted] when that differs from the
         * file's own size. Throws [ModelSpecException] when the model cannot be loaded or
         * disagrees with model.json. Not errors, said in [status]: a delegate that cannot be
         * created or rejects the model (the model runs on the CPU), and an input that cannot be
         * resized (the model runs at its own size).
         */
        fun open(model: ByteBuffer, file: ModelFile, setting: RunSetting, wanted: Size, gpuCache: GpuCache?): GeneratorRunner {
            val own = Size(file.input.width, file.input.height)
            val notes = mutableListOf<String>()
            val start = System.nanoTime()
            val first = create(model, file, setting, wanted, gpuCache, notes)
            var itp = first.first
            var delegate = first.second
            checkTensors(file, itp, delegate)
            var size = own
            if (wanted != own) {
                val problem = resize(itp, wanted)
                if (problem == null) {
                    size = wanted
                } else {
                    // A failed resize can leave the interpreter half-prepared: start again at the model's size.
                    itp.close()
                    closeQuietly(delegate)
                    notes.clear()
                    val again = create(model, file, setting, own, gpuCache, notes)
                    itp = again.first
                    delegate = again.second
                    notes += "could not run at $wanted ($problem): runs at the model's own $own, centre-cropped"
                }
            }
            val openMs = (System.nanoTime() - start) / 1e6
            try {
                return GeneratorRunner(file, itp, delegate, notes.joinToString("\n"), size, openMs)
            } catch (e: Throwable) { // e.g. no memory for the I/O buffers at a large input size
                itp.close()
                closeQuietly(delegate)
                throw e
            }
        }

        /** The I/O of a model with no model.json (a picked file), read from a CPU interpreter. */
        fun describe(model: ByteBuffer): Pair<List<TensorInfo>, List<TensorInfo>> {
            val itp = Interpreter(model, Interpreter.Options().setNumThreads(1))
            try {
                return (0 until itp.inputTensorCount).map { info(itp.getInputTensor(it)) } to
                    (0 until itp.outputTensorCount).map { info(itp.getOutputTensor(it)) }
            } finally {
                itp.close()
            }
        }

        private fun create(
            model: ByteBuffer,
            file: ModelFile,
            setting: RunSetting,
            size: Size,
            gpuCache: GpuCache?,
            notes: MutableList<String>,
        ): Pair<Interpreter, Delegate?> {
            val threads = setting.threads
            var delegate: Delegate? = when (setting.accelerator) {
                Accelerator.CPU -> null
                Accelerator.GPU -> createGpuDelegate(gpuCache, size, notes)
                Accelerator.NNAPI -> createNnApiDelegate(notes)
            }
            if (delegate != null) {
                try {
                    val itp = newInterpreter(model, threads, delegate, notes)
                    notes += "${setting.accelerator.label} delegate applied. Coverage is not reported by the " +
                        "Interpreter API: operators it does not take run on the CPU ($threads thread(s)); " +
                        "benchmark_model's log names them"
                    return itp to delegate
                } catch (e: Exception) {
                    closeQuietly(delegate)
                    delegate = null
                    notes += "${setting.accelerator.label} delegate rejected ${file.file} (${firstLine(e)}): FELL BACK TO CPU"
                }
            }
            val itp = try {
                newInterpreter(model, threads, null, notes)
            } catch (e: Exception) {
                throw ModelSpecException("${file.file} could not be loaded: ${firstLine(e)}")
            }
            notes += "CPU (XNNPACK), $threads thread(s)"
            return itp to delegate
        }

        /** A cancellable interpreter (Cancel interrupts a run between operators), else a plain one. */
        private fun newInterpreter(model: ByteBuffer, threads: Int, delegate: Delegate?, notes: MutableList<String>): Interpreter {
            fun options(cancellable: Boolean): Interpreter.Options {
                val o = Interpreter.Options().setNumThreads(threads).setCancellable(cancellable)
                return if (delegate != null) o.addDelegate(delegate) else o
            }
            return try {
                Interpreter(model, options(cancellable = true))
            } catch (e: UnsupportedOperationException) {
                notes += "this LiteRT build cannot interrupt a run: Cancel waits for the current run to end"
                Interpreter(model, options(cancellable = false))
            }
        }

        private fun checkTensors(file: ModelFile, itp: Interpreter, delegate: Delegate?) {
            try {
                ModelSpecParser.checkAgainstModel(
                    file,
                    (0 until itp.inputTensorCount).map { info(itp.getInputTensor(it)) },
                    (0 until itp.outputTensorCount).map { info(itp.getOutputTensor(it)) },
                )
            } catch (e: ModelSpecException) {
                itp.close()
                closeQuietly(delegate)
                throw e
            }
        }

        /** Resizes the input to [size] and re-allocates; the reason it failed, or null. */
        private fun resize(itp: Interpreter, size: Size): String? {
            val shape = intArrayOf(1, size.height, size.width, PixelMapping.CHANNELS)
            return try {
                itp.resizeInput(0, shape)
                itp.allocateTensors()
                val out = itp.getOutputTensor(0).shape().toList()
                if (out != shape.toList()) "the output would be $out, not ${shape.toList()}" else null
            } catch (e: Exception) {
                firstLine(e)
            }
        }

        /**
         * The GPU delegate as LiteRT recommends: the device's best options, sustained-speed
         * preference (the app runs the same model many times) and the serialized-kernel cache
         * (compiled kernels reused on the next start); the compatibility list closed after use.
         */
        private fun createGpuDelegate(gpuCache: GpuCache?, size: Size, notes: MutableList<String>): Delegate? = try {
            CompatibilityList().use { compatibility ->
                if (compatibility.isDelegateSupportedOnThisDevice) {
                    val options: GpuDelegateFactory.Options = compatibility.bestOptionsForThisDevice
                    options.setInferencePreference(GpuDelegateFactory.Options.INFERENCE_PREFERENCE_SUSTAINED_SPEED)
                    if (gpuCache != null) {
                        gpuCache.dir.mkdirs()
                        val token = GpuCacheToken.token(gpuCache.modelDigest, size.width, size.height)
                        options.setSerializationParams(gpuCache.dir.absolutePath, token)
                        notes += "GPU: sustained-speed preference, kernel cache $token"
                    }
                    GpuDelegate(options)
                } else {
                    notes += "GPU delegate is not supported on this device: FELL BACK TO CPU"
                    null
                }
            }
        } catch (e: Exception) {
            notes += "GPU delegate could not be created (${firstLine(e)}): FELL BACK TO CPU"
            null
        } catch (e: LinkageError) {
            notes += "GPU delegate library is missing (${firstLine(e)}): FELL BACK TO CPU"
            null
        }

        private fun createNnApiDelegate(notes: MutableList<String>): Delegate? {
            if (Build.VERSION.SDK_INT < AcceleratorTable.NNAPI_MIN_SDK) {
                notes += "NNAPI needs Android 8.1 (API ${AcceleratorTable.NNAPI_MIN_SDK}): FELL BACK TO CPU"
                return null
            }
            if (Build.VERSION.SDK_INT >= AcceleratorTable.NNAPI_DEPRECATED_SDK) {
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

        private fun buffer(size: Size, quant: Quantization?): ByteBuffer =
            ByteBuffer.allocateDirect(size.width * size.height * PixelMapping.CHANNELS * PixelMapping.bytesPerValue(quant))
                .order(ByteOrder.nativeOrder())

        private fun info(tensor: Tensor): TensorInfo {
            val q = tensor.quantizationParams()
            val dtype = when (tensor.dataType()) {
                DataType.FLOAT32 -> "float32"
                DataType.INT8 -> "int8"
                else -> tensor.dataType().name.lowercase()
            }
            return TensorInfo(tensor.shape().toList(), dtype, q.scale, q.zeroPoint)
        }

        fun firstLine(e: Throwable): String =
            (e.message ?: e.javaClass.simpleName).lineSequence().first().take(200)

        private fun closeQuietly(delegate: Delegate?) {
            try {
                delegate?.close()
            } catch (e: Exception) {
                // Nothing useful to do: the delegate is being dropped anyway.
            }
        }
    }
}
