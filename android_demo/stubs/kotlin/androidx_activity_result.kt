// Stub for compile checks only (make android-check), written from the public API of androidx activity 1.10.1:
// androidx/androidx activity/activity/src/main/java/androidx/activity/result/ (ActivityResultCallback.kt,
// ActivityResultCaller.kt, ActivityResultLauncher.kt, PickVisualMediaRequest.kt) and
// result/contract/ActivityResultContract.kt, ActivityResultContracts.kt. Only what the app uses.
package androidx.activity.result

import androidx.activity.result.contract.ActivityResultContract
import androidx.activity.result.contract.ActivityResultContracts.PickVisualMedia

public fun interface ActivityResultCallback<O : Any?> {
    public fun onActivityResult(result: O)
}

public abstract class ActivityResultLauncher<I : Any?> {
    public fun launch(input: I) {}
}

public interface ActivityResultCaller {
    public fun <I, O> registerForActivityResult(
        contract: ActivityResultContract<I, O>,
        callback: ActivityResultCallback<O>,
    ): ActivityResultLauncher<I>
}

public class PickVisualMediaRequest internal constructor() {
    public var mediaType: PickVisualMedia.VisualMediaType = PickVisualMedia.ImageAndVideo
        internal set
}

public fun PickVisualMediaRequest(
    mediaType: PickVisualMedia.VisualMediaType = PickVisualMedia.ImageAndVideo,
): PickVisualMediaRequest = PickVisualMediaRequest().apply { this.mediaType = mediaType }
