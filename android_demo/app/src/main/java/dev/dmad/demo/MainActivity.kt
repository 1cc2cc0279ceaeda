package dev.dmad.demo

import android.graphics.Bitmap
import android.net.Uri
import android.os.Bundle
import android.view.View
import android.widget.ArrayAdapter
import android.widget.Button
import android.widget.ImageView
import android.widget.ProgressBar
import android.widget.Spinner
import android.widget.TextView
import androidx.activity.result.PickVisualMediaRequest
import androidx.activity.result.contract.ActivityResultContracts
import androidx.appcompat.app.AppCompatActivity
import androidx.appcompat.widget.SwitchCompat
import androidx.lifecycle.lifecycleScope
import kotlinx.coroutines.ExecutorCoroutineDispatcher
import kotlinx.coroutines.asCoroutineDispatcher
import kotlinx.coroutines.launch
import kotlinx.coroutines.withContext
import java.io.FileNotFoundException
import java.util.Locale
import java.util.concurrent.Executors

/**
 * Pick an image (gallery or a bundled sample), run the generator from assets on it, show input
 * and output side by side with the mean latency of Interpreter.run over N runs after warm-up.
 * Every error (no model, bad model.json, undecodable image, delegate failure) ends up as text
 * in [statusText]; nothing here is allowed to crash the app.
 */
class MainActivity : AppCompatActivity() {
    /** The interpreter and its delegates live on this one thread (the GPU delegate requires it). */
    private val modelThread: ExecutorCoroutineDispatcher =
        Executors.newSingleThreadExecutor().asCoroutineDispatcher()

    private lateinit var modelInfo: TextView
    private lateinit var modelSwitch: SwitchCompat
    private lateinit var acceleratorSpinner: Spinner
    private lateinit var threadsSpinner: Spinner
    private lateinit var runButton: Button
    private lateinit var inputImage: ImageView
    private lateinit var outputImage: ImageView
    private lateinit var progress: ProgressBar
    private lateinit var statusText: TextView

    private var spec: ModelSpec? = null
    private var source: Bitmap? = null
    private var sourceName = ""
    private var sampleIndex = 0

    /** Touched on [modelThread] only. */
    private var runner: GeneratorRunner? = null
    private var runnerKey: Triple<String, Accelerator, Int>? = null

    private val pickImage = registerForActivityResult(ActivityResultContracts.PickVisualMedia()) { uri ->
        if (uri != null) loadPicked(uri)
    }

    override fun onCreate(savedInstanceState: Bundle?) {
        super.onCreate(savedInstanceState)
        setContentView(R.layout.activity_main)
        modelInfo = findViewById(R.id.modelInfo)
        modelSwitch = findViewById(R.id.modelSwitch)
        acceleratorSpinner = findViewById(R.id.acceleratorSpinner)
        threadsSpinner = findViewById(R.id.threadsSpinner)
        runButton = findViewById(R.id.runButton)
        inputImage = findViewById(R.id.inputImage)
        outputImage = findViewById(R.id.outputImage)
        progress = findViewById(R.id.progress)
        statusText = findViewById(R.id.statusText)

        acceleratorSpinner.adapter = ArrayAdapter(
            this, android.R.layout.simple_spinner_dropdown_item, Accelerator.entries.map { it.label },
        )
        threadsSpinner.adapter = ArrayAdapter(
            this, android.R.layout.simple_spinner_dropdown_item, THREAD_CHOICES.map { it.toString() },
        )
        threadsSpinner.setSelection(THREAD_CHOICES.indexOf(DEFAULT_THREADS))
        modelSwitch.setOnCheckedChangeListener { _, _ -> showModelInfo() }

        findViewById<Button>(R.id.pickButton).setOnClickListener {
            pickImage.launch(PickVisualMediaRequest(ActivityResultContracts.PickVisualMedia.ImageOnly))
        }
        findViewById<Button>(R.id.sampleButton).setOnClickListener { loadNextSample() }
        runButton.setOnClickListener { runModel() }

        loadSpec()
        loadNextSample()
    }

    override fun onDestroy() {
        super.onDestroy()
        // Close the interpreter on its own thread, then stop the thread.
        modelThread.executor.execute {
            runner?.close()
            runner = null
        }
        modelThread.close()
    }

    private fun loadSpec() {
        spec = try {
            val text = assets.open(MODEL_JSON).bufferedReader().use { it.readText() }
            ModelSpecParser.parse(text)
        } catch (e: FileNotFoundException) {
            showError(getString(R.string.error_no_model))
            null
        } catch (e: ModelSpecException) {
            showError(e.message ?: "model.json is invalid")
            null
        } catch (e: Exception) {
            showError("model.json could not be read: ${e.message}")
            null
        }
        val s = spec
        val both = s != null && s.byLabel("full") != null && s.byLabel("compressed") != null
        modelSwitch.isEnabled = both
        modelSwitch.isChecked = s?.byLabel("compressed") != null
        runButton.isEnabled = s != null
        showModelInfo()
    }

    private fun selectedEntry(): ModelEntry? {
        val s = spec ?: return null
        val wanted = if (modelSwitch.isChecked) "compressed" else "full"
        return s.byLabel(wanted) ?: s.models.first()
    }

    private fun selectedAccelerator(): Accelerator = Accelerator.entries[acceleratorSpinner.selectedItemPosition]

    private fun selectedThreads(): Int = THREAD_CHOICES[threadsSpinner.selectedItemPosition]

    private fun showModelInfo() {
        val e = selectedEntry()
        if (e == null) {
            modelInfo.text = getString(R.string.no_model_loaded)
            return
        }
        val parity = listOfNotNull(
            (e.parity["psnr_db"] as? Number)?.let { fmt("%.1f dB PSNR", it.toDouble()) },
            (e.parity["max_abs"] as? Number)?.let { fmt("max |err| %.2g", it.toDouble()) },
        ).joinToString(", ").ifEmpty { "not reported" }
        modelInfo.text = buildString {
            append(e.label).append(": ").append(e.file).append('\n')
            append(fmt("%d×%d, %s in / %s out", e.input.width, e.input.height, e.input.dtype, e.output.dtype))
            append('\n')
            append(fmt("%.3f GMACs (true), %.3f (paper), %,d params", e.macsTrue / 1e9, e.macsPaper / 1e9, e.params))
            append('\n')
            append("parity vs PyTorch: ").append(parity).append('\n')
            append("from ").append(e.sourceRun)
        }
    }

    private fun loadNextSample() {
        val names = try {
            assets.list(SAMPLES)?.sorted().orEmpty()
        } catch (e: Exception) {
            emptyList()
        }
        if (names.isEmpty()) {
            showError(getString(R.string.error_no_samples))
            return
        }
        val name = names[sampleIndex++ % names.size]
        loadImage("sample $name") { assets.open("$SAMPLES/$name") }
    }

    private fun loadPicked(uri: Uri) {
        loadImage("the picked image") { contentResolver.openInputStream(uri) }
    }

    private fun loadImage(what: String, open: () -> java.io.InputStream?) {
        val minSide = selectedEntry()?.input?.let { maxOf(it.width, it.height) } ?: DEFAULT_MIN_SIDE
        lifecycleScope.launch {
            val result = withContext(modelThread) {
                try {
                    Images.decode(what, minSide, open)
                } catch (e: ImageException) {
                    e
                } catch (e: Exception) {
                    ImageException("$what could not be loaded: ${e.message}")
                }
            }
            when (result) {
                is Bitmap -> {
                    source = result
                    sourceName = what
                    inputImage.setImageBitmap(result)
                    outputImage.setImageDrawable(null)
                    statusText.text = getString(R.string.image_ready, what, result.width, result.height)
                }
                is ImageException -> showError(result.message ?: "the image could not be loaded")
            }
        }
    }

    private fun runModel() {
        val entry = selectedEntry() ?: return showError(getString(R.string.error_no_model))
        val image = source ?: return showError(getString(R.string.error_no_image))
        val accelerator = selectedAccelerator()
        val threads = selectedThreads()
        setBusy(true)
        lifecycleScope.launch {
            val outcome: Any = withContext(modelThread) {
                try {
                    val r = runnerFor(entry, accelerator, threads)
                    val (scaled, pixels) = Images.toModelInput(image, entry.input.width, entry.input.height)
                    Triple(r.status, scaled, r.run(pixels))
                } catch (e: ModelSpecException) {
                    e.message ?: "model.json does not match the model"
                } catch (e: ImageException) {
                    e.message ?: "the image could not be prepared"
                } catch (e: Exception) {
                    "Run failed: ${e.javaClass.simpleName}: ${e.message}"
                } catch (e: LinkageError) {
                    "Run failed, a native library is missing: ${e.message}"
                } catch (e: OutOfMemoryError) {
                    "Run failed: out of memory"
                }
            }
            setBusy(false)
            if (outcome is Triple<*, *, *>) {
                val status = outcome.first as String
                val result = outcome.third as RunResult
                inputImage.setImageBitmap(outcome.second as Bitmap)
                outputImage.setImageBitmap(Images.fromPixels(result.pixels, result.width, result.height))
                val t = result.timing
                statusText.text = buildString {
                    append(entry.label).append(" model on ").append(sourceName).append('\n')
                    append(status).append('\n')
                    append(
                        fmt(
                            "Interpreter.run: mean %.2f ms (min %.2f, max %.2f) over %d runs after %d warm-up",
                            t.meanMs, t.minMs, t.maxMs, t.timedRuns, t.warmupRuns,
                        ),
                    )
                    append('\n')
                    append(fmt("pre + post-processing: %.2f ms", result.prePostMs))
                }
            } else {
                showError(outcome.toString())
            }
        }
    }

    /** Called on [modelThread]. Re-uses the interpreter while model, accelerator and threads stay the same. */
    private fun runnerFor(entry: ModelEntry, accelerator: Accelerator, threads: Int): GeneratorRunner {
        val key = Triple(entry.file, accelerator, threads)
        runner?.let { if (runnerKey == key) return it }
        runner?.close()
        runner = null
        runnerKey = null
        val opened = GeneratorRunner.open(applicationContext, entry, accelerator, threads)
        runner = opened
        runnerKey = key
        return opened
    }

    private fun setBusy(busy: Boolean) {
        progress.visibility = if (busy) View.VISIBLE else View.GONE
        runButton.isEnabled = !busy && spec != null
    }

    private fun showError(message: String) {
        statusText.text = message
    }

    private fun fmt(format: String, vararg args: Any): String = String.format(Locale.US, format, *args)

    companion object {
        const val MODEL_JSON = "model.json"
        const val SAMPLES = "samples"
        const val DEFAULT_THREADS = 4
        const val DEFAULT_MIN_SIDE = 256
        val THREAD_CHOICES = listOf(1, 2, 4, 8)
    }
}
