package dev.dmad.demo

import org.json.JSONArray
import org.json.JSONException
import org.json.JSONObject

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
    val pixelCount: Int get() = shape[1] * shape[2]
    val byteCount: Int get() = pixelCount * PixelMapping.CHANNELS * PixelMapping.bytesPerValue(quantization)
}

/** A tensor as the interpreter reports it (kept free of LiteRT types so this file stays pure). */
data class TensorInfo(val shape: List<Int>, val dtype: String, val scale: Float, val zeroPoint: Int)

data class ModelEntry(
    val file: String,
    val label: String,
    val input: TensorSpec,
    val output: TensorSpec,
    val macsPaper: Long,
    val macsTrue: Long,
    val params: Long,
    val sourceRun: String,
    val parity: Map<String, Any?>,
)

data class ModelSpec(val schemaVersion: Int, val models: List<ModelEntry>) {
    fun byLabel(label: String): ModelEntry? = models.firstOrNull { it.label == label }
}

/**
 * Reads model.json (MODEL_JSON.md, schema 1) and checks it against the interpreter's tensors.
 * Every rule here has a twin in tests/test_android_app.py (`twin_parse_model_json`,
 * `twin_check_tensor`); keep the two in step.
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
            JSONObject(text)
        } catch (e: JSONException) {
            throw ModelSpecException("model.json is not valid JSON: ${e.message}")
        }
        val problems = mutableListOf<String>()
        val version = root.opt("schema_version")
        if (!isInt(version)) {
            problems += "model.json: schema_version is missing or not an integer"
        } else if ((version as Number).toInt() != SCHEMA_VERSION) {
            problems += "model.json: schema_version is $version; this app reads schema_version $SCHEMA_VERSION"
        }
        val list = root.opt("models")
        val models = mutableListOf<ModelEntry>()
        if (list !is JSONArray || list.length() < 1 || list.length() > MAX_MODELS) {
            problems += "model.json: models must be a list of 1 to $MAX_MODELS entries"
        } else {
            for (i in 0 until list.length()) {
                val obj = list.opt(i)
                if (obj !is JSONObject) {
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

    private fun parseEntry(where: String, obj: JSONObject, problems: MutableList<String>): ModelEntry? {
        val before = problems.size
        val file = obj.opt("file")
        if (file !is String || file.isEmpty() || file.contains('/') || !file.endsWith(".tflite")) {
            problems += "$where.file: must be a .tflite file name in assets (no folders)"
        }
        val label = obj.opt("label")
        if (label !is String || label !in LABELS) {
            problems += "$where.label: must be one of ${LABELS.joinToString()}"
        }
        val input = parseTensor("$where.input", obj.opt("input"), problems)
        val output = parseTensor("$where.output", obj.opt("output"), problems)
        val range = obj.opt("value_range")
        if (range !is JSONArray || range.length() != 2 ||
            !isNumber(range.opt(0)) || !isNumber(range.opt(1)) ||
            (range.opt(0) as Number).toDouble() != PixelMapping.VALUE_LOW.toDouble() ||
            (range.opt(1) as Number).toDouble() != PixelMapping.VALUE_HIGH.toDouble()
        ) {
            problems += "$where.value_range: this app supports [${PixelMapping.VALUE_LOW}, ${PixelMapping.VALUE_HIGH}] only"
        }
        val mapping = obj.opt("pixel_mapping")
        if (mapping !is JSONObject ||
            mapping.opt("to_tensor") != PixelMapping.TO_TENSOR ||
            mapping.opt("from_tensor") != PixelMapping.FROM_TENSOR
        ) {
            problems += "$where.pixel_mapping: this app implements to_tensor \"${PixelMapping.TO_TENSOR}\" " +
                "and from_tensor \"${PixelMapping.FROM_TENSOR}\" only"
        }
        val macs = obj.opt("macs")
        if (macs !is JSONObject || !isCount(macs.opt("paper")) || !isCount(macs.opt("true"))) {
            problems += "$where.macs: must be {\"paper\": int >= 0, \"true\": int >= 0}"
        }
        val params = obj.opt("params")
        if (!isCount(params)) problems += "$where.params: must be an integer >= 0"
        val sourceRun = obj.opt("source_run")
        if (sourceRun !is String) problems += "$where.source_run: must be a string"
        val parity = obj.opt("parity")
        if (parity !is JSONObject) problems += "$where.parity: must be an object"
        if (problems.size != before) return null
        val macsObj = macs as JSONObject
        val parityObj = parity as JSONObject
        return ModelEntry(
            file = file as String,
            label = label as String,
            input = input!!,
            output = output!!,
            macsPaper = (macsObj.opt("paper") as Number).toLong(),
            macsTrue = (macsObj.opt("true") as Number).toLong(),
            params = (params as Number).toLong(),
            sourceRun = sourceRun as String,
            parity = parityObj.keys().asSequence().associateWith { parityObj.opt(it) },
        )
    }

    private fun parseTensor(where: String, value: Any?, problems: MutableList<String>): TensorSpec? {
        if (value !is JSONObject) {
            problems += "$where: missing or not an object"
            return null
        }
        val before = problems.size
        val name = value.opt("name")
        if (name !is String) problems += "$where.name: must be a string"
        val shapeJson = value.opt("shape")
        var shape: List<Int>? = null
        if (shapeJson is JSONArray && shapeJson.length() == 4 &&
            (0 until 4).all { isInt(shapeJson.opt(it)) }
        ) {
            shape = (0 until 4).map { (shapeJson.opt(it) as Number).toInt() }
        }
        if (shape == null || shape[0] != 1 || shape[1] < 1 || shape[2] < 1 || shape[3] != PixelMapping.CHANNELS) {
            problems += "$where.shape: must be [1, H, W, 3] (NHWC, H and W >= 1)"
        }
        val dtype = value.opt("dtype")
        if (dtype !is String || dtype !in DTYPES) {
            problems += "$where.dtype: must be one of ${DTYPES.joinToString()}"
        }
        val q = value.opt("quantization")
        var quant: Quantization? = null
        if (dtype == "float32" && q != null && q != JSONObject.NULL) {
            problems += "$where.quantization: must be null for float32"
        }
        if (dtype == "int8") {
            val scale = (q as? JSONObject)?.opt("scale")
            val zeroPoint = (q as? JSONObject)?.opt("zero_point")
            val scaleOk = isNumber(scale) && (scale as Number).toDouble().let { it.isFinite() && it > 0.0 }
            val zeroOk = isInt(zeroPoint) &&
                (zeroPoint as Number).toInt() in PixelMapping.INT8_MIN..PixelMapping.INT8_MAX
            if (!scaleOk || !zeroOk) {
                problems += "$where.quantization: int8 needs {\"scale\": number > 0, \"zero_point\": int in [-128, 127]}"
            } else {
                quant = Quantization((scale as Number).toFloat(), (zeroPoint as Number).toInt())
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

    /** Checks tensor counts and both tensors; throws [ModelSpecException] listing every problem. */
    fun checkAgainstModel(entry: ModelEntry, inputs: List<TensorInfo>, outputs: List<TensorInfo>) {
        val problems = mutableListOf<String>()
        if (inputs.size != 1) problems += "${entry.file}: the model has ${inputs.size} inputs; schema 1 needs exactly 1"
        if (outputs.size != 1) problems += "${entry.file}: the model has ${outputs.size} outputs; schema 1 needs exactly 1"
        if (inputs.size == 1) problems += checkTensor("${entry.file} input", entry.input, inputs[0])
        if (outputs.size == 1) problems += checkTensor("${entry.file} output", entry.output, outputs[0])
        if (problems.isNotEmpty()) {
            throw ModelSpecException(
                "model.json does not match ${entry.file} (re-run dmad export --android):\n" +
                    problems.joinToString("\n"),
            )
        }
    }

    private fun isNumber(v: Any?): Boolean = v is Number

    private fun isInt(v: Any?): Boolean = v is Int || v is Long

    private fun isCount(v: Any?): Boolean = isInt(v) && (v as Number).toLong() >= 0
}
