package dev.dmad.demo

import android.graphics.Bitmap
import android.net.Uri
import android.os.Build
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
import androidx.lifecycle.lifecycleScope
import kotlinx.coroutines.ExecutorCoroutineDispatcher
import kotlinx.coroutines.asCoroutineDispatcher
import kotlinx.coroutines.launch
import kotlinx.coroutines.withContext
import java.io.File
import java.io.FileNotFoundException
import java.io.InputStream
import java.util.concurrent.Executors

/**
 * One screen: the full and the compressed model (from the app's assets, or .tflite files the user
 * opens) run on the same photo side by side, with their median latencies over alternating A/B
 * rounds and the paired speed-up (Compare), or on every accelerator in one table (Accelerator
 * table). Every error (no model, bad model.json, undecodable image, delegate failure) ends up as
 * text; nothing here is allowed to crash the app.
 */
class MainActivity : AppCompatActivity() {
    /** The interpreters and their delegates live on this one thread (the GPU delegate requires it). */
    private val modelThread: ExecutorCoroutineDispatcher =
        Executors.newSingleThreadExecutor().asCoroutineDispatcher()

    private lateinit var modelInfo: TextView
    private lateinit var acceleratorSpinner: Spinner
    private lateinit var threadsSpinner: Spinner
    private lateinit var sizeSpinner: Spinner
    private lateinit var actionButtons: List<Button>
    private lateinit var cancelButton: Button
    private lateinit var inputCaption: TextView
    private lateinit var inputImage: ImageView
    private lateinit var outputImages: List<ImageView>
    private lateinit var outputCaptions: List<TextView>
    private lateinit var progress: ProgressBar
    private lateinit var progressText: TextView
    private lateinit var resultText: TextView
    private lateinit var tableText: TextView
    private lateinit var statusText: TextView

    /** Touched on the UI thread only. */
    private val slots = LinkedHashMap<String, LoadedModel?>()
    private var modelError: String? = null
    private var photo: Photo? = null
    private var photoName = ""

    /** Where [photo] came from, to load it again in a recreated activity: "sample:NAME" or "uri:URI". */
    private var photoSource: String? = null
    private var sampleIndex = 0
    private var job: CancelToken? = null
    private var pickingFor = LABEL_COMPRESSED

    /** Touched on [modelThread] only: the runners of the last comparison, kept for the next one. */
    private val runners = HashMap<RunnerKey, GeneratorRunner>()

    private data class RunnerKey(val modelId: String, val file: String, val setting: RunSetting, val wanted: Size)

    /** What the input size spinner offers: the photo's own size up to a long side, or the model's own size. */
    private data class SizeChoice(val maxLongSide: Int?)

    private val sizeChoices = listOf(
        SizeChoice(InputGeometry.MAX_LONG_SIDE),
        SizeChoice(SMALL_LONG_SIDE),
        SizeChoice(null),
    )

    private val pickImage = registerForActivityResult(ActivityResultContracts.PickVisualMedia()) { uri ->
        if (uri != null) loadPicked(uri)
    }

    private val openModel = registerForActivityResult(ActivityResultContracts.OpenDocument()) { uri ->
        if (uri != null) loadPickedModel(pickingFor, uri)
    }

    override fun onCreate(savedInstanceState: Bundle?) {
        super.onCreate(savedInstanceState)
        setContentView(R.layout.activity_main)
        modelInfo = findViewById(R.id.modelInfo)
        acceleratorSpinner = findViewById(R.id.acceleratorSpinner)
        threadsSpinner = findViewById(R.id.threadsSpinner)
        sizeSpinner = findViewById(R.id.sizeSpinner)
        cancelButton = findViewById(R.id.cancelButton)
        inputCaption = findViewById(R.id.inputCaption)
        inputImage = findViewById(R.id.inputImage)
        outputImages = listOf(findViewById(R.id.fullOutput), findViewById(R.id.compressedOutput))
        outputCaptions = listOf(findViewById(R.id.fullCaption), findViewById(R.id.compressedCaption))
        progress = findViewById(R.id.progress)
        progressText = findViewById(R.id.progressText)
        resultText = findViewById(R.id.resultText)
        tableText = findViewById(R.id.tableText)
        statusText = findViewById(R.id.statusText)

        acceleratorSpinner.adapter = ArrayAdapter(
            this, android.R.layout.simple_spinner_dropdown_item, Accelerator.entries.map { it.label },
        )
        threadsSpinner.adapter = ArrayAdapter(
            this, android.R.layout.simple_spinner_dropdown_item, THREAD_CHOICES.map { it.toString() },
        )
        threadsSpinner.setSelection(THREAD_CHOICES.indexOf(DEFAULT_THREADS))
        sizeSpinner.adapter = ArrayAdapter(
            this, android.R.layout.simple_spinner_dropdown_item,
            sizeChoices.map { c -> c.maxLongSide?.let { getString(R.string.size_photo, it) } ?: getString(R.string.size_model) },
        )

        val openFull = findViewById<Button>(R.id.openFullButton)
        val openCompressed = findViewById<Button>(R.id.openCompressedButton)
        val assetsButton = findViewById<Button>(R.id.assetsButton)
        val pickButton = findViewById<Button>(R.id.pickButton)
        val sampleButton = findViewById<Button>(R.id.sampleButton)
        val compareButton = findViewById<Button>(R.id.compareButton)
        val tableButton = findViewById<Button>(R.id.tableButton)
        actionButtons = listOf(openFull, openCompressed, assetsButton, pickButton, sampleButton, compareButton, tableButton)
        openFull.setOnClickListener { openModelFile(LABEL_FULL) }
        openCompressed.setOnClickListener { openModelFile(LABEL_COMPRESSED) }
        assetsButton.setOnClickListener { loadModels(emptyMap()) }
        pickButton.setOnClickListener {
            pickImage.launch(PickVisualMediaRequest(ActivityResultContracts.PickVisualMedia.ImageOnly))
        }
        sampleButton.setOnClickListener { loadNextSample() }
        compareButton.setOnClickListener { compare() }
        tableButton.setOnClickListener { fillTable() }
        cancelButton.setOnClickListener {
            job?.cancel()
            progressText.text = getString(R.string.cancelling)
        }

        // A recreated activity (e.g. after a display-size change) gets its photo, picked models
        // and last results back; the interpreters are created again on the next run.
        val state = savedInstanceState
        loadModels(
            LABELS.mapNotNull { label ->
                val path = state?.getString(STATE_PICKED_PATH + label) ?: return@mapNotNull null
                label to Pair(path, state.getString(STATE_PICKED_NAME + label) ?: path)
            }.toMap(),
        )
        val source = state?.getString(STATE_PHOTO)
        when {
            source == null -> loadNextSample()
            source.startsWith(SOURCE_SAMPLE) -> loadSample(source.removePrefix(SOURCE_SAMPLE))
            else -> loadPicked(Uri.parse(source.removePrefix(SOURCE_URI)))
        }
        state?.getCharSequence(STATE_RESULT)?.let { resultText.text = it }
        state?.getCharSequence(STATE_TABLE)?.let { tableText.text = it }
    }

    override fun onSaveInstanceState(outState: Bundle) {
        super.onSaveInstanceState(outState)
        outState.putString(STATE_PHOTO, photoSource)
        for (label in LABELS) {
            val m = slots[label] ?: continue
            val copy = m.pickedCopy ?: continue
            outState.putString(STATE_PICKED_PATH + label, copy.path)
            outState.putString(STATE_PICKED_NAME + label, m.pickedName)
        }
        outState.putCharSequence(STATE_RESULT, resultText.text)
        outState.putCharSequence(STATE_TABLE, tableText.text)
    }

    override fun onDestroy() {
        super.onDestroy()
        job?.cancel()
        // Close the interpreters on their own thread, then stop the thread.
        modelThread.executor.execute { closeRunners(emptySet()) }
        modelThread.close()
    }

    // -- models ------------------------------------------------------------------------------

    /**
     * The models of both slots: [restore] (label -> (path, name) of a picked file's copy) first,
     * else the app's model.json. Each slot's problem becomes a line of text.
     */
    private fun loadModels(restore: Map<String, Pair<String, String>>) {
        if (job != null) return
        setBusy(CancelToken())
        lifecycleScope.launch {
            val (loaded, problems) = withContext(modelThread) {
                closeRunners(emptySet())
                val notes = mutableListOf<String>()
                val spec = try {
                    ModelStore.readAssetSpec(applicationContext)
                } catch (e: FileNotFoundException) {
                    if (restore.isEmpty()) notes += getString(R.string.error_no_model)
                    null
                } catch (e: ModelSpecException) {
                    notes += e.message ?: "model.json is invalid"
                    null
                } catch (e: Exception) {
                    notes += "model.json could not be read: ${e.message}"
                    null
                }
                val models = LABELS.associateWith { label ->
                    val picked = restore[label]?.let { (path, name) ->
                        when (val m = guard { ModelStore.loadCopy(File(path), name, label) }) {
                            is LoadedModel -> m
                            else -> {
                                notes += "$name could not be opened again: $m"
                                null
                            }
                        }
                    }
                    picked ?: spec?.byLabel(label)?.let { entry ->
                        when (val m = guard { ModelStore.loadFromAssets(applicationContext, entry) }) {
                            is LoadedModel -> m
                            else -> {
                                notes += m.toString()
                                null
                            }
                        }
                    }
                }
                models to notes.joinToString("\n")
            }
            setBusy(null)
            slots.clear()
            slots.putAll(loaded)
            modelError = problems.ifEmpty { null }
            modelError?.let { showError(it) }
            showModelInfo()
        }
    }

    private fun openModelFile(label: String) {
        pickingFor = label
        openModel.launch(arrayOf("*/*"))
    }

    private fun loadPickedModel(label: String, uri: Uri) {
        if (job != null) return
        setBusy(CancelToken())
        lifecycleScope.launch {
            val outcome: Any = withContext(modelThread) {
                closeRunners(emptySet()) // no interpreter may still map the previous copy
                guard { ModelStore.loadPicked(applicationContext, uri, label) }
            }
            setBusy(null)
            if (outcome is LoadedModel) {
                slots[label] = outcome
                modelError = null
                showModelInfo()
                statusText.text = Report.modelInfo(outcome.entry, picked = true)
            } else {
                showError(outcome.toString())
            }
        }
    }

    private fun loadedModels(): List<LoadedModel> = LABELS.mapNotNull { slots[it] }

    private fun showModelInfo() {
        if (slots.values.all { it == null }) {
            modelInfo.text = modelError ?: getString(R.string.no_model_loaded)
            return
        }
        modelInfo.text = LABELS.joinToString("\n\n") { label ->
            slots[label]?.let { Report.modelInfo(it.entry, it.pickedName != null) }
                ?: getString(R.string.no_model_for_label, label)
        }
    }

    // -- images ------------------------------------------------------------------------------

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
        loadSample(names[sampleIndex++ % names.size])
    }

    private fun loadSample(name: String) {
        loadImage("sample $name", SOURCE_SAMPLE + name) { assets.open("$SAMPLES/$name") }
    }

    private fun loadPicked(uri: Uri) {
        loadImage("the picked image", SOURCE_URI + uri) { contentResolver.openInputStream(uri) }
    }

    /** Decodes on [modelThread], after whatever runs there (the buttons that start a load are off while a job runs). */
    private fun loadImage(what: String, source: String, open: () -> InputStream?) {
        val wanted = maxOf(InputGeometry.MAX_LONG_SIDE, loadedModels().maxOfOrNull { maxOf(it.entry.input.width, it.entry.input.height) } ?: 0)
        lifecycleScope.launch {
            val result = withContext(modelThread) {
                try {
                    Images.decode(what, wanted, open)
                } catch (e: ImageException) {
                    e
                } catch (e: Exception) {
                    ImageException("$what could not be loaded: ${e.message}")
                }
            }
            when (result) {
                is Photo -> {
                    photo = result
                    photoName = what
                    photoSource = source
                    inputImage.setImageBitmap(result.bitmap)
                    inputCaption.text = photoCaption(result, null)
                    outputImages.forEach { it.setImageDrawable(null) }
                    statusText.text = getString(R.string.image_ready, what, result.bitmap.width, result.bitmap.height)
                }
                is ImageException -> showError(result.message ?: "the image could not be loaded")
            }
        }
    }

    private fun photoCaption(p: Photo, input: Size?): String = buildString {
        append(photoName).append(' ').append(p.size.toString())
        if (p.orientation != Orientation.UPRIGHT) {
            append(", EXIF orientation ").append(p.exifOrientation).append(" applied (")
            if (p.orientation.mirror) append("mirrored, ")
            append("rotated ").append(p.orientation.degrees).append("°)")
        }
        input?.let { append(" → model input ").append(it.toString()).append(" (centre crop, no stretch)") }
    }

    // -- measurements ------------------------------------------------------------------------

    private fun selectedSetting(): RunSetting = RunSetting(
        Accelerator.entries[acceleratorSpinner.selectedItemPosition],
        THREAD_CHOICES[threadsSpinner.selectedItemPosition],
    )

    private fun selectedSize(): SizeChoice = sizeChoices[sizeSpinner.selectedItemPosition]

    /** The input size each model is asked for: one common size when possible ([InputGeometry.commonSize]). */
    private fun wantedSizes(p: Photo, files: List<ModelFile>, models: List<LoadedModel>, choice: SizeChoice): List<Size> {
        val rules = files.mapIndexed { i, f ->
            if (choice.maxLongSide == null) {
                SizeRule.Fixed(Size(f.input.width, f.input.height))
            } else {
                SizeRule.Flexible(models[i].entry.sizeMultiple ?: InputGeometry.DEFAULT_SIZE_MULTIPLE)
            }
        }
        val common = InputGeometry.commonSize(p.size.width, p.size.height, rules, choice.maxLongSide ?: InputGeometry.MAX_LONG_SIDE)
        return files.map { common ?: Size(it.input.width, it.input.height) }
    }

    /** Called on [modelThread]: opens (or reuses) the runner of [model]'s [file] on [setting] at [wanted]. */
    private fun runnerFor(model: LoadedModel, file: ModelFile, setting: RunSetting, wanted: Size, cache: Boolean): GeneratorRunner {
        val key = RunnerKey(model.id, file.file, setting, wanted)
        if (cache) runners[key]?.let { return it }
        val gpuCache = if (setting.accelerator == Accelerator.GPU) GpuCache(File(codeCacheDir, GPU_CACHE_DIR), model.digest(file)) else null
        val runner = GeneratorRunner.open(model.buffer(file), file, setting, wanted, gpuCache)
        if (cache) runners[key] = runner
        return runner
    }

    /** Called on [modelThread]: closes every cached runner whose key is not in [keep]. */
    private fun closeRunners(keep: Set<RunnerKey>) {
        val stale = runners.keys - keep
        for (k in stale) runners.remove(k)?.close()
    }

    /** A measurement of every model on one setting, as the table and the compare screen need it. */
    private class Measured(val arms: List<ArmReport>, val result: AbResult, val inputs: List<Bitmap>, val outputs: List<Bitmap?>)

    /** Called on [modelThread]: alternating A/B runs of [models] on [setting]. */
    private fun measure(
        models: List<LoadedModel>,
        p: Photo,
        setting: RunSetting,
        choice: SizeChoice,
        token: CancelToken,
        cache: Boolean,
    ): Measured {
        val files = models.map { it.entry.fileFor(setting.accelerator) }
        val wanted = wantedSizes(p, files, models, choice)
        val keys = models.indices.map { RunnerKey(models[it].id, files[it].file, setting, wanted[it]) }.toSet()
        if (cache) closeRunners(keys) else closeRunners(emptySet())
        val opened = mutableListOf<GeneratorRunner>()
        try {
            for (i in models.indices) {
                token.check()
                opened += runnerFor(models[i], files[i], setting, wanted[i], cache)
            }
            val inputs = HashMap<Size, Pair<Bitmap, IntArray>>()
            for (r in opened) r.setInput(inputs.getOrPut(r.size) { Images.toModelInput(p.bitmap, r.size) }.second)
            val label = setting.label
            val result = AbSchedule.run(
                opened.map { r -> { r.timedRun(token) } },
                AbSchedule.WARMUP_ROUNDS, AbSchedule.TIMED_ROUNDS, token,
            ) { done, total -> runOnUiThread { showProgress(label, done, total) } }
            val outputs = opened.mapIndexed { i, r ->
                if (result.times[i].isNotEmpty()) Images.fromPixels(r.outputPixels(), r.size.width, r.size.height) else null
            }
            val arms = models.indices.map { i ->
                val r = opened[i]
                ArmReport(models[i].entry.label, files[i], r.status, r.size, r.openMs, result.summary(i))
            }
            return Measured(arms, result, opened.map { inputs.getValue(it.size).first }, outputs)
        } finally {
            if (!cache) opened.forEach { it.close() }
        }
    }

    private fun compare() {
        val models = loadedModels()
        if (models.isEmpty()) return showError(modelError ?: getString(R.string.error_no_model))
        val p = photo ?: return showError(getString(R.string.error_no_image))
        val setting = selectedSetting()
        val choice = selectedSize()
        val token = CancelToken()
        setBusy(token)
        resultText.text = ""
        lifecycleScope.launch {
            val outcome: Any = withContext(modelThread) {
                guard { measure(models, p, setting, choice, token, cache = true) }
            }
            setBusy(null)
            if (outcome !is Measured) return@launch showError(outcome.toString())
            inputImage.setImageBitmap(outcome.inputs.first())
            inputCaption.text = photoCaption(p, outcome.arms.first().size)
            for (i in outputImages.indices) {
                val arm = outcome.arms.firstOrNull { it.label == LABELS[i] }
                val index = outcome.arms.indexOf(arm)
                outputImages[i].setImageBitmap(if (index >= 0) outcome.outputs[index] else null)
                outputCaptions[i].text = when {
                    arm == null -> getString(R.string.no_model_for_label, LABELS[i])
                    arm.summary == null -> "${arm.label}: no complete run"
                    else -> Report.fmt("%s: median %.1f ms", arm.label, arm.summary.medianMs) +
                        (outcome.result.pairedSpeedup?.takeIf { i == 1 }?.let { Report.fmt(" (×%.2f)", it) } ?: "")
                }
            }
            resultText.text = Report.compare(setting, outcome.arms, outcome.result)
            statusText.text = if (outcome.result.cancelled) getString(R.string.cancelled) else ""
        }
    }

    private fun fillTable() {
        val models = loadedModels()
        if (models.isEmpty()) return showError(modelError ?: getString(R.string.error_no_model))
        val p = photo ?: return showError(getString(R.string.error_no_image))
        val choice = selectedSize()
        val settings = AcceleratorTable.rows(Build.VERSION.SDK_INT)
        val labels = models.map { it.entry.label }
        val token = CancelToken()
        setBusy(token)
        tableText.text = Report.table(emptyList(), settings, labels)
        lifecycleScope.launch {
            val rows = withContext(modelThread) {
                val done = mutableListOf<TableRow>()
                for (setting in settings) {
                    if (token.isCancelled) break
                    val row: TableRow = when (val m = guard { measure(models, p, setting, choice, token, cache = false) }) {
                        is Measured -> TableRow(setting, m.arms, m.result, null)
                        else -> TableRow(setting, emptyList(), null, m.toString())
                    }
                    if (row.error != null && token.isCancelled) break
                    done += row
                    val snapshot = done.toList()
                    runOnUiThread { tableText.text = Report.table(snapshot, settings.drop(snapshot.size), labels) }
                }
                done
            }
            setBusy(null)
            tableText.text = Report.table(rows, emptyList(), labels) +
                if (token.isCancelled) "\n" + getString(R.string.cancelled) else ""
        }
    }

    /** Runs [block]; any failure becomes its message (shown as text). */
    private fun guard(block: () -> Any): Any = try {
        block()
    } catch (e: CancelledException) {
        getString(R.string.cancelled)
    } catch (e: ModelSpecException) {
        e.message ?: "model.json does not match the model"
    } catch (e: ImageException) {
        e.message ?: "the image could not be prepared"
    } catch (e: Exception) {
        "Run failed: ${e.javaClass.simpleName}: ${e.message}"
    } catch (e: LinkageError) {
        "Run failed, a native library is missing: ${e.message}"
    } catch (e: OutOfMemoryError) {
        "Run failed: out of memory (choose a smaller input size)"
    }

    private fun showProgress(label: String, done: Int, total: Int) {
        progress.max = total
        progress.progress = done
        if (job?.isCancelled != true) progressText.text = getString(R.string.progress_runs, label, done, total)
    }

    /** [token] non-null: a job runs (actions off, Cancel on); null: idle. */
    private fun setBusy(token: CancelToken?) {
        job = token
        val busy = token != null
        progress.visibility = if (busy) View.VISIBLE else View.GONE
        progress.progress = 0
        if (!busy) progressText.text = ""
        actionButtons.forEach { it.isEnabled = !busy }
        cancelButton.isEnabled = busy
    }

    private fun showError(message: String) {
        statusText.text = message
    }

    companion object {
        const val SAMPLES = "samples"
        const val SOURCE_SAMPLE = "sample:"
        const val SOURCE_URI = "uri:"
        const val STATE_PHOTO = "photo"
        const val STATE_PICKED_PATH = "picked_path_"
        const val STATE_PICKED_NAME = "picked_name_"
        const val STATE_RESULT = "result"
        const val STATE_TABLE = "table"
        const val DEFAULT_THREADS = 4
        const val SMALL_LONG_SIDE = 512
        const val GPU_CACHE_DIR = "gpu_kernels"
        const val LABEL_FULL = "full"
        const val LABEL_COMPRESSED = "compressed"
        val LABELS = listOf(LABEL_FULL, LABEL_COMPRESSED)
        val THREAD_CHOICES = listOf(1, 2, 4, 8)
    }
}
