// Stub for compile checks only (make android-check), written from the public API of androidx lifecycle 2.8.7:
// androidx/androidx lifecycle/lifecycle-common/.../LifecycleOwner.kt, Lifecycle.kt, and lifecycle-runtime's
// LifecycleOwner.lifecycleScope / LifecycleCoroutineScope. Only what the app uses.
package androidx.lifecycle

import kotlinx.coroutines.CoroutineScope

public abstract class Lifecycle

public interface LifecycleOwner {
    public val lifecycle: Lifecycle
}

public abstract class LifecycleCoroutineScope internal constructor() : CoroutineScope

public val LifecycleOwner.lifecycleScope: LifecycleCoroutineScope
    get() = throw UnsupportedOperationException("stub")
