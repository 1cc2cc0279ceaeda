// Stub for compile checks only (make android-check), written from the public API of androidx appcompat 1.7.0:
// androidx/androidx appcompat/appcompat/src/main/java/androidx/appcompat/widget/SwitchCompat.java (a
// CompoundButton: isChecked/setOnCheckedChangeListener come from android.widget). Only what the app uses.
package androidx.appcompat.widget;

import android.content.Context;
import android.util.AttributeSet;
import android.widget.CompoundButton;

public class SwitchCompat extends CompoundButton {
  public SwitchCompat(Context context) {
    super(context);
  }

  public SwitchCompat(Context context, AttributeSet attrs) {
    super(context, attrs);
  }
}
