package dev.dmad.demo

/** Thrown on the model thread when the user cancelled the measurement it was running. */
class CancelledException : Exception("cancelled")

/**
 * Cancel for one measurement. [cancel] is called from the UI thread; the model thread checks
 * [isCancelled] between runs and, while one run is in progress, has registered a hook (through
 * [whileRunning]) that interrupts it (LiteRT's Interpreter.setCancelled). The hook is never called
 * after [whileRunning] returns, so the interpreter can be closed safely afterwards.
 */
class CancelToken {
    private val lock = Any()
    private var hook: (() -> Unit)? = null

    @Volatile
    var isCancelled: Boolean = false
        private set

    fun cancel() {
        synchronized(lock) {
            if (isCancelled) return
            isCancelled = true
            callQuietly(hook)
        }
    }

    /** Throws [CancelledException] once [cancel] was called. */
    fun check() {
        if (isCancelled) throw CancelledException()
    }

    /** Runs [block] with [onCancel] registered as the way to interrupt it. */
    fun <T> whileRunning(onCancel: () -> Unit, block: () -> T): T {
        synchronized(lock) {
            if (isCancelled) throw CancelledException()
            hook = onCancel
        }
        try {
            return block()
        } finally {
            synchronized(lock) { hook = null }
        }
    }

    private fun callQuietly(f: (() -> Unit)?) {
        try {
            f?.invoke()
        } catch (e: RuntimeException) {
            // Best effort: the run then ends on its own and the next check() stops the loop.
        }
    }
}
