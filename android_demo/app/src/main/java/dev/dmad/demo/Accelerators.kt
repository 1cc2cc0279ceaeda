package dev.dmad.demo

import java.nio.ByteBuffer
import java.security.MessageDigest

/** Where the interpreter runs the model. [key] is the accelerator's key in model.json's `for_delegate`. */
enum class Accelerator(val label: String, val key: String) {
    CPU("CPU", "cpu"),
    GPU("GPU", "gpu"),
    NNAPI("NNAPI", "nnapi"),
}

/**
 * One way to run a model: an accelerator and the CPU thread count (for the GPU and NNAPI, the
 * threads run the operators the delegate leaves on the CPU).
 */
data class RunSetting(val accelerator: Accelerator, val threads: Int) {
    val label: String
        get() = if (accelerator == Accelerator.CPU) "CPU, $threads thread${if (threads == 1) "" else "s"}" else accelerator.label
}

object AcceleratorTable {
    /** NnApiDelegate needs Android 8.1 (API 27); the app's minSdk is 26. */
    const val NNAPI_MIN_SDK = 27

    /** NNAPI is deprecated from Android 15 (API 35) on. */
    const val NNAPI_DEPRECATED_SDK = 35
    const val TABLE_THREADS = 4

    /** The rows of the accelerator table on a phone running API level [sdkInt]. */
    fun rows(sdkInt: Int): List<RunSetting> = buildList {
        add(RunSetting(Accelerator.CPU, 1))
        add(RunSetting(Accelerator.CPU, TABLE_THREADS))
        add(RunSetting(Accelerator.GPU, TABLE_THREADS))
        if (sdkInt >= NNAPI_MIN_SDK) add(RunSetting(Accelerator.NNAPI, TABLE_THREADS))
    }
}

/**
 * The GPU delegate's serialization cache (compiled kernels kept between runs): LiteRT stores it
 * under a directory the app gives, keyed by a token that must be unique to the model graph and
 * data. The token here is a digest of the model's bytes plus the input size (a resized input
 * compiles other kernels), in the characters a file name can hold.
 */
object GpuCacheToken {
    fun digest(model: ByteBuffer): String {
        val md = MessageDigest.getInstance("SHA-256")
        md.update(model.duplicate().apply { rewind() })
        return md.digest().take(DIGEST_BYTES).joinToString("") { "%02x".format(it.toInt() and BYTE_MASK) }
    }

    fun token(modelDigest: String, width: Int, height: Int): String =
        "dmad_" + modelDigest.filter { it.isLetterOrDigit() } + "_${width}x$height"

    private const val DIGEST_BYTES = 16
    private const val BYTE_MASK = 0xFF
}
