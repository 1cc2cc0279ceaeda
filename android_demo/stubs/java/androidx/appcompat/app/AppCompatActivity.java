// Stub for compile checks only (make android-check), written from the public API of androidx appcompat 1.7.0:
// androidx/androidx appcompat/appcompat/src/main/java/androidx/appcompat/app/AppCompatActivity.java (the real
// class extends androidx.fragment.app.FragmentActivity, a ComponentActivity). Only what the app uses.
package androidx.appcompat.app;

import androidx.activity.ComponentActivity;

// The generic findViewById<T> the app calls is Activity's own since API 26 (android-check patches the
// API 23 android.jar's signature to it: stubs/tools/GenericFindViewById.java).
public class AppCompatActivity extends ComponentActivity {
  public AppCompatActivity() {}
}
