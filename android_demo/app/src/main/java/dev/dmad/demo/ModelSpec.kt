package dev.dmad.demo

/** A problem with model.json or the model it names; the message is shown to the user as is. */
class ModelSpecException(message: String) : Exception(message)

/** One input or output tensor as model.json describes it. */
data class TensorSpec(
    val name: String,
    val shape: List<Int>,
    val dtype: String,
    val quantization: Quantization?,
) {
    val height: Int get() = shape[1]
    val width: Int get() = shape[2]
}

/** A tensor as the interpreter reports it (kept free of LiteRT types so this file stays pure). */
data class TensorInfo(val shape: List<Int>, val dtype: String, val scale: Float, val zeroPoint: Int)

/** One .tflite file of a model and what model.json says about it. */
data class ModelFile(
    val file: String,
    val variant: String?,
    val input: TensorSpec,
    val output: TensorSpec,
    val parity: Map<String, Any?>,
    val chosenBecause: String?,
    /** true: the file's parity is below the exporter's PSNR floor; null: not said. */
    val belowFloor: Boolean?,
)

/** model.json's `gpu_delegate`: the exporter's host-side check of the op set (not a run on a phone). */
data class GpuCheck(val compatible: Boolean?, val issues: List<String>, val checker: String?)

data class ModelEntry(
    val label: String,
    /** The entry's own `file` and tensors. */
    val main: ModelFile,
    val macsPaper: Long,
    val macsTrue: Long,
    val params: Long,
    val sourceRun: String,
    /** `size_multiple`: the model takes any H and W that are multiples of this; null: not said. */
    val sizeMultiple: Int?,
    val gpuDelegate: GpuCheck?,
    /** `for_delegate`: accelerator key (cpu, gpu, nnapi) -> file name, each validated. */
    val forDelegate: Map<String, String>,
    /** `extra_files`: other files of the same model (e.g. an fp16 file for phone GPUs). */
    val extraFiles: List<ModelFile>,
) {
    val file: String get() = main.file
    val input: TensorSpec get() = main.input
    val output: TensorSpec get() = main.output

    /** The file [accelerator] runs: `for_delegate[accelerator]` when model.json names one, else the main file. */
    fun fileFor(accelerator: Accelerator): ModelFile {
        val name = forDelegate[accelerator.key] ?: return main
        return extraFiles.firstOrNull { it.file == name } ?: main
    }

    /** Every file the entry names (main first). */
    val files: List<ModelFile> get() = listOf(main) + extraFiles
}

data class ModelSpec(val schemaVersion: Int, val models: List<ModelEntry>) {
    fun byLabel(label: String): ModelEntry? = models.firstOrNull { it.label == label }
}

/**
 * Reads model.json (MODEL_JSON.md, schema 1) and checks it against the interpreter's tensors.
 * Pure Kotlin (its own JSON reader, [Json]): the JVM unit tests run it. Every rule here has a
 * twin in tests/test_android_app.py (`twin_parse_model_json`, `twin_check_tensor`); keep the two
 * in step.
 */
object ModelSpecParser {
    const val SCHEMA_VERSION = 1
    const val MAX_MODELS = 2
    const val SCALE_RTOL = 1e-6
    val LABELS = listOf("full", "compressed")
    val DTYPES = listOf("float32", "int8")

    /** Parses and validates; throws [ModelSpecException] listing every problem found. */
    fun parse(text: String): ModelSpec {
        val root = try {
            Json.parse(text)
        } catch (e: JsonException) {
            throw ModelSpecException("model.json is not valid JSON: ${e.message}")
        }
        if (root !is Map<*, *>) throw ModelSpecException("model.json is not valid JSON: not an object")
        val problems = mutableListOf<String>()
        val version = root["schema_version"]
        if (!isInt(version)) {
            problems += "model.json: schema_version is missing or not an integer"
        } else if ((version as Long) != SCHEMA_VERSION.toLong()) {
            problems += "model.json: schema_version is $version; this app reads schema_version $SCHEMA_VERSION"
        }
        val list = root["models"]
        val models = mutableListOf<ModelEntry>()
        if (list !is List<*> || list.size < 1 || list.size > MAX_MODELS) {
            problems += "model.json: models must be a list of 1 to $MAX_MODELS entries"
        } else {
            for ((i, obj) in list.withIndex()) {
                if (obj !is Map<*, *>) {
                    problems += "models[$i]: not an object"
                    continue
                }
                parseEntry("models[$i]", obj, problems)?.let { models += it }
            }
            val labels = models.map { it.label }
            if (labels.toSet().size != labels.size) {
                problems += "model.json: two models have the same label"
            }
        }
        if (problems.isNotEmpty()) throw ModelSpecException(problems.joinToString("\n"))
        return ModelSpec(SCHEMA_VERSION, models)
    }

    private fun parseEntry(where: String, obj: Map<*, *>, problems: MutableList<String>): ModelEntry? {
        val before = problems.size
        val label = obj["label"]
        if (label !is String || label !in LABELS) {
            problems += "$where.label: must be one of ${LABELS.joinToString()}"
        }
        val main = parseFile(where, obj, problems, parityRequired = true)
        val range = obj["value_range"]
        if (range !is List<*> || range.size != 2 ||
            !isNumber(range[0]) || !isNumber(range[1]) ||
            (range[0] as Number).toDouble() != PixelMapping.VALUE_LOW.toDouble() ||
            (range[1] as Number).toDouble() != PixelMapping.VALUE_HIGH.toDouble()
        ) {
            problems += "$where.value_range: this app supports [${PixelMapping.VALUE_LOW}, ${PixelMapping.VALUE_HIGH}] only"
        }
        val mapping = obj["pixel_mapping"]
        if (mapping !is Map<*, *> ||
            mapping["to_tensor"] != PixelMapping.TO_TENSOR ||
            mapping["from_tensor"] != PixelMapping.FROM_TENSOR
        ) {
            problems += "$where.pixel_mapping: this app implements to_tensor \"${PixelMapping.TO_TENSOR}\" " +
                "and from_tensor \"${PixelMapping.FROM_TENSOR}\" only"
        }
        val macs = obj["macs"]
        if (macs !is Map<*, *> || !isCount(macs["paper"]) || !isCount(macs["true"])) {
            problems += "$where.macs: must be {\"paper\": int >= 0, \"true\": int >= 0}"
        }
        val params = obj["params"]
        if (!isCount(params)) problems += "$where.params: must be an integer >= 0"
        val sourceRun = obj["source_run"]
        if (sourceRun !is String) problems += "$where.source_run: must be a string"
        val multiple = obj["size_multiple"]
        if (obj.containsKey("size_multiple") && (!isInt(multiple) || (multiple as Long) !in 1L..Int.MAX_VALUE.toLong())) {
            problems += "$where.size_multiple: must be an integer >= 1"
        }
        val gpu = obj["gpu_delegate"]
        if (obj.containsKey("gpu_delegate") && gpu !is Map<*, *>) {
            problems += "$where.gpu_delegate: must be an object"
        }
        val mainName = obj["file"] as? String
        val extras = parseExtraFiles(where, obj, mainName, problems)
        val forDelegate = parseForDelegate(where, obj, mainName, extras, problems)
        if (problems.size != before) return null
        val macsObj = macs as Map<*, *>
        return ModelEntry(
            label = label as String,
            main = main!!,
            macsPaper = macsObj["paper"] as Long,
            macsTrue = macsObj["true"] as Long,
            params = params as Long,
            sourceRun = sourceRun as String,
            sizeMultiple = (multiple as Long?)?.toInt(),
            gpuDelegate = (gpu as? Map<*, *>)?.let { g ->
                GpuCheck(
                    compatible = g["compatible"] as? Boolean,
                    issues = (g["issues"] as? List<*>)?.filterIsInstance<String>().orEmpty(),
                    checker = g["checker"] as? String,
                )
            },
            forDelegate = forDelegate,
            extraFiles = extras,
        )
    }

    /**
     * The keys one file has, on the entry itself and on each `extra_files` item: `file`, `input`,
     * `output`, and the optional `variant`, `parity`, `chosen_because`, `below_floor`.
     */
    private fun parseFile(
        where: String,
        obj: Map<*, *>,
        problems: MutableList<String>,
        parityRequired: Boolean,
    ): ModelFile? {
        val before = problems.size
        val file = obj["file"]
        if (!isFileName(file)) {
            problems += "$where.file: must be a .tflite file name in assets (no folders)"
        }
        val input = parseTensor("$where.input", obj["input"], problems)
        val output = parseTensor("$where.output", obj["output"], problems)
        val variant = obj["variant"]
        if (obj.containsKey("variant") && variant !is String) problems += "$where.variant: must be a string"
        val parity = obj["parity"]
        if ((parityRequired || obj.containsKey("parity")) && parity !is Map<*, *>) {
            problems += "$where.parity: must be an object"
        }
        val why = obj["chosen_because"]
        if (obj.containsKey("chosen_because") && why !is String) {
            problems += "$where.chosen_because: must be a string"
        }
        val belowFloor = obj["below_floor"]
        if (obj.containsKey("below_floor") && belowFloor !is Boolean) {
            problems += "$where.below_floor: must be true or false"
        }
        if (problems.size != before) return null
        return ModelFile(
            file = file as String,
            variant = variant as String?,
            input = input!!,
            output = output!!,
            parity = (parity as? Map<*, *>)?.entries?.associate { (k, v) -> k.toString() to v }.orEmpty(),
            chosenBecause = why as String?,
            belowFloor = belowFloor as Boolean?,
        )
    }

    private fun parseExtraFiles(
        where: String,
        obj: Map<*, *>,
        mainFile: String?,
        problems: MutableList<String>,
    ): List<ModelFile> {
        if (!obj.containsKey("extra_files")) return emptyList()
        val list = obj["extra_files"]
        if (list !is List<*> || list.any { it !is Map<*, *> }) {
            problems += "$where.extra_files: must be a list of objects"
            return emptyList()
        }
        val out = mutableListOf<ModelFile>()
        for ((i, item) in list.withIndex()) {
            val w = "$where.extra_files[$i]"
            val f = parseFile(w, item as Map<*, *>, problems, parityRequired = false) ?: continue
            if (f.file == mainFile || out.any { it.file == f.file }) {
                problems += "$w.file: ${f.file} is listed twice or is the main file"
                continue
            }
            out += f
        }
        return out
    }

    private fun parseForDelegate(
        where: String,
        obj: Map<*, *>,
        mainFile: String?,
        extras: List<ModelFile>,
        problems: MutableList<String>,
    ): Map<String, String> {
        if (!obj.containsKey("for_delegate")) return emptyMap()
        val map = obj["for_delegate"]
        if (map !is Map<*, *>) {
            problems += "$where.for_delegate: must be an object mapping cpu, gpu, nnapi to file names"
            return emptyMap()
        }
        val out = LinkedHashMap<String, String>()
        // Keys of accelerators this app does not know (a future "npu") are ignored.
        for (key in Accelerator.entries.map { it.key }) {
            if (!map.containsKey(key)) continue
            val name = map[key]
            if (!isFileName(name)) {
                problems += "$where.for_delegate.$key: must be a .tflite file name in assets (no folders)"
            } else if (name != mainFile && extras.none { it.file == name }) {
                problems += "$where.for_delegate.$key: names $name, which is not the entry's file or one of its extra_files"
            } else {
                out[key] = name as String
            }
        }
        return out
    }

    private fun parseTensor(where: String, value: Any?, problems: MutableList<String>): TensorSpec? {
        if (value !is Map<*, *>) {
            problems += "$where: missing or not an object"
            return null
        }
        val before = problems.size
        val name = value["name"]
        if (name !is String) problems += "$where.name: must be a string"
        val shapeJson = value["shape"]
        var shape: List<Int>? = null
        if (shapeJson is List<*> && shapeJson.size == 4 && shapeJson.all { isInt(it) && (it as Long) in 0L..Int.MAX_VALUE.toLong() }) {
            shape = shapeJson.map { (it as Long).toInt() }
        }
        if (shape == null || shape[0] != 1 || shape[1] < 1 || shape[2] < 1 || shape[3] != PixelMapping.CHANNELS) {
            problems += "$where.shape: must be [1, H, W, 3] (NHWC, H and W >= 1)"
        }
        val dtype = value["dtype"]
        if (dtype !is String || dtype !in DTYPES) {
            problems += "$where.dtype: must be one of ${DTYPES.joinToString()}"
        }
        val q = value["quantization"]
        var quant: Quantization? = null
        if (dtype == "float32" && q != null) {
            problems += "$where.quantization: must be null for float32"
        }
        if (dtype == "int8") {
            val scale = (q as? Map<*, *>)?.get("scale")
            val zeroPoint = (q as? Map<*, *>)?.get("zero_point")
            val scaleOk = isNumber(scale) && (scale as Number).toDouble().let { it.isFinite() && it > 0.0 }
            val zeroOk = isInt(zeroPoint) &&
                (zeroPoint as Long) in PixelMapping.INT8_MIN.toLong()..PixelMapping.INT8_MAX.toLong()
            if (!scaleOk || !zeroOk) {
                problems += "$where.quantization: int8 needs {\"scale\": number > 0, \"zero_point\": int in [-128, 127]}"
            } else {
                quant = Quantization((scale as Number).toFloat(), (zeroPoint as Long).toInt())
            }
        }
        if (problems.size != before) return null
        return TensorSpec(name as String, shape!!, dtype as String, quant)
    }

    /** Differences between model.json's view of a tensor and the interpreter's; empty when they agree. */
    fun checkTensor(where: String, spec: TensorSpec, actual: TensorInfo): List<String> {
        val problems = mutableListOf<String>()
        if (spec.shape != actual.shape) {
            problems += "$where: model.json says shape ${spec.shape}, the model has ${actual.shape}"
        }
        if (spec.dtype != actual.dtype) {
            problems += "$where: model.json says dtype ${spec.dtype}, the model has ${actual.dtype}"
        } else if (spec.quantization != null) {
            val q = spec.quantization
            val scaleOk = Math.abs(q.scale.toDouble() - actual.scale.toDouble()) <=
                SCALE_RTOL * Math.abs(actual.scale.toDouble())
            if (!scaleOk || q.zeroPoint != actual.zeroPoint) {
                problems += "$where: model.json says scale ${q.scale} zero point ${q.zeroPoint}, " +
                    "the model has scale ${actual.scale} zero point ${actual.zeroPoint}"
            }
        }
        return problems
    }

    /**
     * Checks tensor counts and both tensors of one file (the main file or an extra file, each
     * against its own tensor objects); throws [ModelSpecException] listing every problem.
     */
    fun checkAgainstModel(file: ModelFile, inputs: List<TensorInfo>, outputs: List<TensorInfo>) {
        val problems = countProblems(file.file, inputs, outputs)
        if (inputs.size == 1) problems += checkTensor("${file.file} input", file.input, inputs[0])
        if (outputs.size == 1) problems += checkTensor("${file.file} output", file.output, outputs[0])
        if (problems.isNotEmpty()) {
            throw ModelSpecException(
                "model.json does not match ${file.file} (re-run dmad export --android):\n" +
                    problems.joinToString("\n"),
            )
        }
    }

    /**
     * A model the user picked as a file, with no model.json: its I/O comes from the interpreter
     * and passes the same tensor rules as model.json's; the pixel mapping is this app's (dmad's
     * [-1, 1]). Throws [ModelSpecException] when the model is not an image-to-image generator the
     * app can feed.
     */
    fun entryFromModel(label: String, file: String, inputs: List<TensorInfo>, outputs: List<TensorInfo>): ModelEntry {
        val problems = countProblems(file, inputs, outputs)
        if (problems.isEmpty()) {
            val input = parseTensor("$file input", tensorObject("input", inputs[0]), problems)
            val output = parseTensor("$file output", tensorObject("output", outputs[0]), problems)
            if (problems.isEmpty()) {
                val main = ModelFile(file, null, input!!, output!!, emptyMap(), null, null)
                return ModelEntry(label, main, 0, 0, 0, "picked file", null, null, emptyMap(), emptyList())
            }
        }
        throw ModelSpecException("$file cannot run in this app:\n" + problems.joinToString("\n"))
    }

    private fun countProblems(file: String, inputs: List<TensorInfo>, outputs: List<TensorInfo>): MutableList<String> {
        val problems = mutableListOf<String>()
        if (inputs.size != 1) problems += "$file: the model has ${inputs.size} inputs; schema 1 needs exactly 1"
        if (outputs.size != 1) problems += "$file: the model has ${outputs.size} outputs; schema 1 needs exactly 1"
        return problems
    }

    /** The interpreter's view of a tensor written as a model.json tensor object. */
    private fun tensorObject(name: String, t: TensorInfo): Map<String, Any?> = mapOf(
        "name" to name,
        "shape" to t.shape.map { it.toLong() },
        "dtype" to t.dtype,
        "quantization" to if (t.dtype == "int8") {
            mapOf("scale" to t.scale.toDouble(), "zero_point" to t.zeroPoint.toLong())
        } else {
            null
        },
    )

    private fun isFileName(v: Any?): Boolean =
        v is String && v.isNotEmpty() && !v.contains('/') && v.endsWith(".tflite")

    private fun isNumber(v: Any?): Boolean = v is Long || v is Double

    private fun isInt(v: Any?): Boolean = v is Long

    private fun isCount(v: Any?): Boolean = isInt(v) && (v as Long) >= 0
}
