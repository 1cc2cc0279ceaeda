package dev.dmad.demo

/** model.json as `dmad export --android` writes it (MODEL_JSON.md), with knobs to break one field at a time. */
internal object Doc {
    const val SHAPE = "[1, 256, 256, 3]"

    fun tensor(name: String, dtype: String, shape: String = SHAPE, quantization: String? = null): String {
        val q = quantization ?: if (dtype == "int8") """{"scale": 0.0078125, "zero_point": 0}""" else "null"
        return """{"name": "$name", "shape": $shape, "dtype": "$dtype", "quantization": $q}"""
    }

    fun common(label: String): String = """
        "label": "$label",
        "value_range": [-1, 1],
        "pixel_mapping": {"to_tensor": "x/127.5 - 1", "from_tensor": "clamp(round((y + 1) * 127.5), 0, 255)"},
        "macs": {"paper": 2101346304, "true": 2098200576},
        "params": 71235,
        "source_run": "runs/demo/student"
    """

    val full = """{
        "file": "full.tflite", ${common("full")},
        "input": ${tensor("in", "float32")}, "output": ${tensor("out", "float32")},
        "parity": {"reference": "pytorch", "psnr_db": 139.3, "max_abs": 2.4e-05},
        "variant": "fp32", "size_multiple": 4, "below_floor": false,
        "for_delegate": {"cpu": "full.tflite", "nnapi": "full.tflite", "gpu": "full.tflite"}
    }"""

    fun gpuExtra(
        file: String = "compressed_gpu.tflite",
        input: String = tensor("in", "float32"),
        belowFloor: String = "true",
        extra: String = "",
    ): String = """{"file": "$file", "variant": "fp16", "input": $input, "output": ${tensor("out", "float32")},
        "parity": {"psnr_db": 24.0}, "chosen_because": "fp16 runs on phone GPUs", "below_floor": $belowFloor $extra}"""

    fun compressed(
        forDelegate: String = """{"cpu": "compressed.tflite", "nnapi": "compressed.tflite", "gpu": "compressed_gpu.tflite"}""",
        extraFiles: String = "[${gpuExtra()}]",
        more: String = "",
    ): String = """{
        "file": "compressed.tflite", ${common("compressed")},
        "input": ${tensor("in", "int8")}, "output": ${tensor("out", "int8")},
        "parity": {"reference": "pytorch", "psnr_db": 30.5, "max_abs": 0.31},
        "variant": "int8", "chosen_because": "int8 met its floor", "below_floor": false, "size_multiple": 4,
        "gpu_delegate": {"compatible": false, "issues": ["MIRROR_PAD"], "checker": "tf.lite.experimental.Analyzer"},
        "for_delegate": $forDelegate,
        "extra_files": $extraFiles $more
    }"""

    fun of(vararg models: String): String = """{"schema_version": 1, "models": [${models.joinToString(",")}]}"""
}

/** MODEL_JSON.md's examples, read from the document itself (the unit tests run from the repository root or app/). */
internal object DocExamples {
    private val candidates = listOf("android_demo/MODEL_JSON.md", "../MODEL_JSON.md", "MODEL_JSON.md")

    /** The ```json blocks of MODEL_JSON.md, or null when the document is not reachable from here. */
    fun blocks(): List<String>? {
        val doc = candidates.map { java.io.File(it) }.firstOrNull { it.isFile } ?: return null
        return Regex("```json\\n(.*?)```", RegexOption.DOT_MATCHES_ALL).findAll(doc.readText()).map { it.groupValues[1] }.toList()
    }

    /** [value] (as Json.parse returns it) written back as JSON text. */
    fun write(value: Any?): String = when (value) {
        null -> "null"
        is String -> "\"" + value.replace("\\", "\\\\").replace("\"", "\\\"") + "\""
        is Map<*, *> -> value.entries.joinToString(", ", "{", "}") { (k, v) -> write(k.toString()) + ": " + write(v) }
        is List<*> -> value.joinToString(", ", "[", "]") { write(it) }
        else -> value.toString()
    }
}
