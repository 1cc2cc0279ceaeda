package dev.dmad.demo

import android.content.Context
import android.net.Uri
import android.provider.OpenableColumns
import org.tensorflow.lite.support.common.FileUtil
import java.io.File
import java.io.FileInputStream
import java.io.IOException
import java.nio.ByteBuffer
import java.nio.channels.FileChannel

/**
 * A model ready to run: its model.json entry (or one built from the interpreter for a picked
 * file) and the bytes of each of its files, memory-mapped.
 */
class LoadedModel(
    val entry: ModelEntry,
    /** null: from the app's assets; else the name of the file the user picked. */
    val pickedName: String?,
    private val buffers: Map<String, ByteBuffer>,
    /** The app's copy of a picked file (kept across a recreated activity). */
    val pickedCopy: File? = null,
) {
    private val digests = HashMap<String, String>()

    /** Identifies the model source in runner caches (a picked file and an asset may share a name). */
    val id: String get() = pickedName?.let { "picked:${entry.label}:$it" } ?: "assets:${entry.label}"

    fun buffer(file: ModelFile): ByteBuffer =
        buffers[file.file] ?: throw ModelSpecException("${file.file} is not loaded")

    /** SHA-256 prefix of the file's bytes, for the GPU kernel cache token (computed once). */
    fun digest(file: ModelFile): String = digests.getOrPut(file.file) { GpuCacheToken.digest(buffer(file)) }
}

object ModelStore {
    const val MODEL_JSON = "model.json"
    private const val PICKED_DIR = "picked"

    /** model.json from the app's assets, parsed and validated; throws java.io.FileNotFoundException when absent. */
    fun readAssetSpec(context: Context): ModelSpec {
        val text = context.assets.open(MODEL_JSON).bufferedReader().use { it.readText() }
        return ModelSpecParser.parse(text)
    }

    /** Maps every file [entry] names (the main file and its extra files) from the assets. */
    fun loadFromAssets(context: Context, entry: ModelEntry): LoadedModel {
        val present = try {
            context.assets.list("")?.toSet().orEmpty()
        } catch (e: IOException) {
            emptySet()
        }
        val buffers = LinkedHashMap<String, ByteBuffer>()
        for (f in entry.files) {
            if (f.file !in present) {
                throw ModelSpecException(
                    "model.json names ${f.file}, but it is not in the app's assets " +
                        "(run dmad export --android or make android-assets, then rebuild)",
                )
            }
            buffers[f.file] = try {
                FileUtil.loadMappedFile(context, f.file)
            } catch (e: IOException) {
                throw ModelSpecException(
                    "${f.file} could not be memory-mapped (${GeneratorRunner.firstLine(e)}); it must be stored " +
                        "uncompressed: keep androidResources.noCompress += \"tflite\"",
                )
            }
        }
        return LoadedModel(entry, null, buffers)
    }

    /**
     * A .tflite the user picked with the document picker, for the [label] slot: copied into the
     * app's cache (a document may be a stream, not a file that can be mapped), mapped, and its I/O
     * read from the interpreter and checked with model.json's tensor rules. Close every runner
     * of the slot first.
     */
    fun loadPicked(context: Context, uri: Uri, label: String): LoadedModel {
        val name = displayName(context, uri)
        val dir = File(context.cacheDir, PICKED_DIR).apply { mkdirs() }
        // A new name each time: an interpreter closed a moment ago may still have mapped the
        // previous copy, and a mapped file must not be rewritten (removing it is safe).
        dir.listFiles()?.filter { it.name.startsWith("$label-") }?.forEach { it.delete() }
        val copy = File(dir, "$label-${System.currentTimeMillis()}.tflite")
        val input = context.contentResolver.openInputStream(uri) ?: throw ModelSpecException("$name could not be opened")
        input.use { src -> copy.outputStream().use { src.copyTo(it) } }
        return loadCopy(copy, name, label)
    }

    /** The app's copy of a picked file (see [loadPicked]), mapped and described again. */
    fun loadCopy(copy: File, name: String, label: String): LoadedModel {
        val buffer = FileInputStream(copy).use { it.channel.map(FileChannel.MapMode.READ_ONLY, 0, it.channel.size()) }
        val (inputs, outputs) = try {
            GeneratorRunner.describe(buffer)
        } catch (e: Exception) {
            throw ModelSpecException("$name is not a model LiteRT can load: ${GeneratorRunner.firstLine(e)}")
        }
        val entry = ModelSpecParser.entryFromModel(label, name, inputs, outputs)
        return LoadedModel(entry, name, mapOf(name to buffer), copy)
    }

    private fun displayName(context: Context, uri: Uri): String {
        val fromProvider = try {
            context.contentResolver.query(uri, arrayOf(OpenableColumns.DISPLAY_NAME), null, null, null)?.use { c ->
                if (c.moveToFirst()) c.getString(0) else null
            }
        } catch (e: RuntimeException) {
            null
        }
        return fromProvider?.takeIf { it.isNotBlank() } ?: uri.lastPathSegment ?: "picked.tflite"
    }
}
