package dev.dmad.demo

import org.junit.Assert.assertEquals
import org.junit.Assert.assertNotNull
import org.junit.Assert.assertNull
import org.junit.Assert.assertThrows
import org.junit.Assert.assertTrue
import org.junit.Test

class ModelSpecTest {
    private fun problems(text: String): String =
        assertThrows(ModelSpecException::class.java) { ModelSpecParser.parse(text) }.message!!

    private fun assertRefused(text: String, vararg needles: String) {
        val message = problems(text)
        for (n in needles) assertTrue("'$n' not in:\n$message", message.contains(n))
    }

    @Test
    fun theExportersModelJsonIsAccepted() {
        val spec = ModelSpecParser.parse(Doc.of(Doc.full, Doc.compressed()))
        val c = spec.byLabel("compressed")!!
        assertEquals("compressed.tflite", c.file)
        assertEquals(Quantization(0.0078125f, 0), c.input.quantization)
        assertEquals(4, c.sizeMultiple)
        assertEquals("int8 met its floor", c.main.chosenBecause)
        assertEquals(false, c.main.belowFloor)
        assertEquals(GpuCheck(false, listOf("MIRROR_PAD"), "tf.lite.experimental.Analyzer"), c.gpuDelegate)
        assertEquals(30.5, c.main.parity["psnr_db"])
        assertEquals(2098200576L, c.macsTrue)
    }

    @Test
    fun theExamplesOfModelJsonMdAreAccepted() {
        // Gradle runs unit tests in app/, scripts/android_unit_tests.sh in the repository root.
        val blocks = DocExamples.blocks()
        assertNotNull("MODEL_JSON.md is not reachable from ${java.io.File(".").absolutePath}", blocks)
        assertTrue(blocks!!.size >= 2)
        val main = ModelSpecParser.parse(blocks[0]).models[0]
        assertEquals("compressed", main.label)
        // The per-delegate example is the keys added to the main example's entry.
        @Suppress("UNCHECKED_CAST")
        val doc = Json.parse(blocks[0]) as Map<String, Any?>
        @Suppress("UNCHECKED_CAST")
        val entry = (doc["models"] as List<Map<String, Any?>>)[0] + (Json.parse(blocks[1]) as Map<String, Any?>)
        val merged = ModelSpecParser.parse(DocExamples.write(doc + ("models" to listOf(entry)))).models[0]
        assertEquals("compressed_gpu.tflite", merged.fileFor(Accelerator.GPU).file)
        assertEquals("compressed.tflite", merged.fileFor(Accelerator.CPU).file)
        assertEquals(4, merged.sizeMultiple)
    }

    @Test
    fun forDelegatePicksTheFileOfEachAccelerator() {
        val c = ModelSpecParser.parse(Doc.of(Doc.full, Doc.compressed())).byLabel("compressed")!!
        assertEquals("compressed.tflite", c.fileFor(Accelerator.CPU).file)
        assertEquals("compressed.tflite", c.fileFor(Accelerator.NNAPI).file)
        val gpu = c.fileFor(Accelerator.GPU)
        assertEquals("compressed_gpu.tflite", gpu.file)
        assertEquals("fp16", gpu.variant)
        assertEquals(true, gpu.belowFloor)
        assertEquals("float32", gpu.input.dtype)
        assertNull(gpu.input.quantization)
        assertEquals(listOf("compressed.tflite", "compressed_gpu.tflite"), c.files.map { it.file })
    }

    @Test
    fun withoutForDelegateEveryAcceleratorRunsTheMainFile() {
        val plain = Doc.compressed(forDelegate = "{}", extraFiles = "[]")
        val c = ModelSpecParser.parse(Doc.of(plain)).models[0]
        for (a in Accelerator.entries) assertEquals("compressed.tflite", c.fileFor(a).file)
        // The schema-1 example with none of the new keys is still read.
        val old = Doc.of(Doc.full.replace(Regex(""""variant".*"gpu": "full.tflite"\}""", RegexOption.DOT_MATCHES_ALL), """"variant": "fp32""""))
        val f = ModelSpecParser.parse(old).models[0]
        assertNull(f.sizeMultiple)
        assertEquals(emptyMap<String, String>(), f.forDelegate)
        assertEquals("full.tflite", f.fileFor(Accelerator.GPU).file)
    }

    @Test
    fun aGpuExtraFileWithAWrongDtypeIsRefusedNamingTheField() {
        val bad = Doc.compressed(extraFiles = "[${Doc.gpuExtra(input = Doc.tensor("in", "uint8"))}]")
        assertRefused(Doc.of(Doc.full, bad), "models[1].extra_files[0].input.dtype: must be one of float32, int8")
    }

    @Test
    fun anExtraFilesTensorsFollowTheMainFilesRules() {
        val nchw = Doc.gpuExtra(input = Doc.tensor("in", "float32", shape = "[1, 3, 256, 256]"))
        assertRefused(Doc.of(Doc.compressed(extraFiles = "[$nchw]")), "models[0].extra_files[0].input.shape: must be [1, H, W, 3]")
        val int8NoQ = Doc.gpuExtra(input = Doc.tensor("in", "int8", quantization = "null"))
        assertRefused(Doc.of(Doc.compressed(extraFiles = "[$int8NoQ]")), "models[0].extra_files[0].input.quantization: int8 needs")
        val floatWithQ = Doc.gpuExtra(input = Doc.tensor("in", "float32", quantization = """{"scale": 1.0, "zero_point": 0}"""))
        assertRefused(Doc.of(Doc.compressed(extraFiles = "[$floatWithQ]")), "models[0].extra_files[0].input.quantization: must be null for float32")
        assertRefused(Doc.of(Doc.compressed(extraFiles = "[${Doc.gpuExtra(file = "gpu/x.tflite")}]")), "models[0].extra_files[0].file: must be a .tflite")
        assertRefused(Doc.of(Doc.compressed(extraFiles = "[${Doc.gpuExtra(belowFloor = "\"no\"")}]")), "models[0].extra_files[0].below_floor: must be true or false")
        assertRefused(Doc.of(Doc.compressed(extraFiles = "[${Doc.gpuExtra(extra = ", \"parity\": 3")}]")), "models[0].extra_files[0].parity: must be an object")
    }

    @Test
    fun forDelegateMustNameAFileOfTheEntry() {
        val unknown = Doc.compressed(forDelegate = """{"gpu": "other.tflite"}""")
        assertRefused(Doc.of(unknown), "models[0].for_delegate.gpu: names other.tflite, which is not the entry's file or one of its extra_files")
        assertRefused(Doc.of(Doc.compressed(forDelegate = """{"cpu": "a/b.tflite"}""")), "models[0].for_delegate.cpu: must be a .tflite file name")
        assertRefused(Doc.of(Doc.compressed(forDelegate = "[]")), "models[0].for_delegate: must be an object")
        // An accelerator this app does not know is ignored (forward compatible).
        val npu = Doc.compressed(forDelegate = """{"npu": "whatever.bin", "gpu": "compressed_gpu.tflite"}""")
        assertEquals(mapOf("gpu" to "compressed_gpu.tflite"), ModelSpecParser.parse(Doc.of(npu)).models[0].forDelegate)
    }

    @Test
    fun extraFilesMustBeAListOfDistinctFiles() {
        assertRefused(Doc.of(Doc.compressed(extraFiles = "{}")), "models[0].extra_files: must be a list of objects")
        assertRefused(Doc.of(Doc.compressed(extraFiles = "[${Doc.gpuExtra()}, ${Doc.gpuExtra()}]")), "is listed twice or is the main file")
        assertRefused(Doc.of(Doc.compressed(extraFiles = "[${Doc.gpuExtra(file = "compressed.tflite")}]")), "is listed twice or is the main file")
    }

    @Test
    fun theNewOptionalKeysAreTypeChecked() {
        assertRefused(Doc.of(Doc.compressed(more = """, "size_multiple": 0""")), "models[0].size_multiple: must be an integer >= 1")
        assertRefused(Doc.of(Doc.compressed(more = """, "size_multiple": 4.0""")), "models[0].size_multiple: must be an integer >= 1")
        assertRefused(Doc.of(Doc.compressed(more = """, "below_floor": 1""")), "models[0].below_floor: must be true or false")
        assertRefused(Doc.of(Doc.compressed(more = """, "gpu_delegate": "ok"""")), "models[0].gpu_delegate: must be an object")
        assertRefused(Doc.of(Doc.compressed(more = """, "chosen_because": 3""")), "models[0].chosen_because: must be a string")
        assertRefused(Doc.of(Doc.compressed(more = """, "variant": null""")), "models[0].variant: must be a string")
    }

    @Test
    fun theSchemaOneRulesStillHold() {
        assertRefused(Doc.of(Doc.full).replace("\"schema_version\": 1", "\"schema_version\": 2"), "this app reads schema_version 1")
        assertRefused(Doc.of(Doc.full, Doc.full), "two models have the same label")
        assertRefused(Doc.of(Doc.full, Doc.compressed(), Doc.full), "models must be a list of 1 to 2")
        assertRefused(Doc.of(Doc.full.replace("\"label\": \"full\"", "\"label\": \"tiny\"")), "models[0].label: must be one of full, compressed")
        assertRefused(Doc.of(Doc.full.replace(Doc.SHAPE, "[1, 256.0, 256, 3]")), "models[0].input.shape", "models[0].output.shape")
        assertRefused(Doc.of(Doc.full.replace("[-1, 1]", "[0, 1]")), "models[0].value_range: this app supports [-1.0, 1.0] only")
        assertRefused(Doc.of(Doc.full.replace("x/127.5 - 1", "x/255")), "models[0].pixel_mapping: this app implements")
        assertRefused(Doc.of(Doc.full.replace("\"params\": 71235", "\"params\": -1")), "models[0].params: must be an integer >= 0")
        assertRefused("{not json", "model.json is not valid JSON")
        assertRefused("[1]", "model.json is not valid JSON: not an object")
    }

    @Test
    fun everyProblemIsListedAtOnce() {
        val broken = Doc.full.replace("\"label\": \"full\"", "\"label\": \"tiny\"").replace("\"params\": 71235", "\"params\": \"many\"")
        val message = problems(Doc.of(broken))
        assertTrue(message, message.contains(".label:") && message.contains(".params:"))
    }

    @Test
    fun theExtraFileIsCheckedAgainstItsOwnTensors() {
        val c = ModelSpecParser.parse(Doc.of(Doc.compressed())).models[0]
        val shape = listOf(1, 256, 256, 3)
        val float = TensorInfo(shape, "float32", 0f, 0)
        val int8 = TensorInfo(shape, "int8", 0.0078125f, 0)
        // Each file against its own tensor objects: the fp16 GPU file has float32 I/O, the main file int8.
        ModelSpecParser.checkAgainstModel(c.fileFor(Accelerator.GPU), listOf(float), listOf(float))
        ModelSpecParser.checkAgainstModel(c.main, listOf(int8), listOf(int8))
        val e = assertThrows(ModelSpecException::class.java) {
            ModelSpecParser.checkAgainstModel(c.fileFor(Accelerator.GPU), listOf(int8), listOf(float))
        }
        assertTrue(e.message!!, e.message!!.contains("compressed_gpu.tflite input: model.json says dtype float32, the model has int8"))
        val scale = assertThrows(ModelSpecException::class.java) {
            ModelSpecParser.checkAgainstModel(c.main, listOf(int8.copy(scale = 0.0079f)), listOf(int8))
        }
        assertTrue(scale.message!!, scale.message!!.contains("compressed.tflite input: model.json says scale"))
        val two = assertThrows(ModelSpecException::class.java) {
            ModelSpecParser.checkAgainstModel(c.main, listOf(int8, int8), listOf(int8))
        }
        assertTrue(two.message!!, two.message!!.contains("the model has 2 inputs; schema 1 needs exactly 1"))
    }

    @Test
    fun aPickedFileGetsItsIoFromTheInterpreter() {
        val int8 = TensorInfo(listOf(1, 512, 384, 3), "int8", 0.0078f, -1)
        val e = ModelSpecParser.entryFromModel("compressed", "my.tflite", listOf(int8), listOf(int8))
        assertEquals("my.tflite", e.file)
        assertEquals(Size(384, 512), Size(e.input.width, e.input.height))
        assertEquals(Quantization(0.0078f, -1), e.input.quantization)
        assertEquals("my.tflite", e.fileFor(Accelerator.GPU).file)
        val nchw = TensorInfo(listOf(1, 3, 256, 256), "float32", 0f, 0)
        val refused = assertThrows(ModelSpecException::class.java) {
            ModelSpecParser.entryFromModel("full", "cls.tflite", listOf(nchw), listOf(TensorInfo(listOf(1, 1000), "float32", 0f, 0)))
        }
        assertTrue(refused.message!!, refused.message!!.contains("cls.tflite input.shape: must be [1, H, W, 3]"))
        assertTrue(refused.message!!, refused.message!!.contains("cls.tflite output.shape"))
        val uint8 = TensorInfo(listOf(1, 8, 8, 3), "uint8", 1f, 0)
        assertThrows(ModelSpecException::class.java) { ModelSpecParser.entryFromModel("full", "u.tflite", listOf(uint8), listOf(uint8)) }
    }
}
