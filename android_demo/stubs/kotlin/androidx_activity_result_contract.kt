// Stub for compile checks only (make android-check), written from the public API of androidx activity 1.10.1:
// androidx/androidx activity/activity/src/main/java/androidx/activity/result/contract/ActivityResultContract.kt
// and ActivityResultContracts.kt (PickVisualMedia, its sealed VisualMediaType and the ImageOnly/ImageAndVideo
// objects nested directly in it; OpenDocument, input = the MIME types). Only what the app uses.
package androidx.activity.result.contract

import android.content.Context
import android.content.Intent
import android.net.Uri
import androidx.activity.result.PickVisualMediaRequest

public abstract class ActivityResultContract<I, O> {
    public abstract fun createIntent(context: Context, input: I): Intent

    public abstract fun parseResult(resultCode: Int, intent: Intent?): O
}

public class ActivityResultContracts private constructor() {
    public open class OpenDocument : ActivityResultContract<Array<String>, Uri?>() {
        override fun createIntent(context: Context, input: Array<String>): Intent =
            throw UnsupportedOperationException("stub")

        final override fun parseResult(resultCode: Int, intent: Intent?): Uri? =
            throw UnsupportedOperationException("stub")
    }

    public open class PickVisualMedia : ActivityResultContract<PickVisualMediaRequest, Uri?>() {
        public sealed interface VisualMediaType

        public object ImageOnly : VisualMediaType

        public object VideoOnly : VisualMediaType

        public object ImageAndVideo : VisualMediaType

        override fun createIntent(context: Context, input: PickVisualMediaRequest): Intent =
            throw UnsupportedOperationException("stub")

        override fun parseResult(resultCode: Int, intent: Intent?): Uri? =
            throw UnsupportedOperationException("stub")
    }
}
