// Stub for compile checks only (make android-check), written from the public API of androidx activity 1.10.1:
// androidx/androidx activity/activity/src/main/java/androidx/activity/ComponentActivity.kt (the real class
// extends androidx.core.app.ComponentActivity, itself an android.app.Activity). Only what the app uses.
package androidx.activity;

import androidx.activity.result.ActivityResultCallback;
import androidx.activity.result.ActivityResultCaller;
import androidx.activity.result.ActivityResultLauncher;
import androidx.activity.result.contract.ActivityResultContract;
import androidx.lifecycle.Lifecycle;
import androidx.lifecycle.LifecycleOwner;

public class ComponentActivity extends android.app.Activity
    implements LifecycleOwner, ActivityResultCaller {
  public ComponentActivity() {}

  @Override
  public Lifecycle getLifecycle() {
    throw new UnsupportedOperationException("stub");
  }

  @Override
  public final <I, O> ActivityResultLauncher<I> registerForActivityResult(
      ActivityResultContract<I, O> contract, ActivityResultCallback<O> callback) {
    throw new UnsupportedOperationException("stub");
  }
}
