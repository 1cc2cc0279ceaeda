// Stub for compile checks only (make android-check), written from the public API of androidx exifinterface 1.4.2:
// androidx/androidx exifinterface/exifinterface/src/main/java/androidx/exifinterface/media/ExifInterface.java
// (reads Exif from JPEG, PNG, WebP, HEIF and raw files; API 23's android.media.ExifInterface has no
// InputStream constructor). Only what the app uses.
package androidx.exifinterface.media;

import java.io.IOException;
import java.io.InputStream;

public class ExifInterface {
  public static final String TAG_ORIENTATION = "Orientation";

  public static final int ORIENTATION_UNDEFINED = 0;
  public static final int ORIENTATION_NORMAL = 1;
  public static final int ORIENTATION_FLIP_HORIZONTAL = 2;
  public static final int ORIENTATION_ROTATE_180 = 3;
  public static final int ORIENTATION_FLIP_VERTICAL = 4;
  public static final int ORIENTATION_TRANSPOSE = 5;
  public static final int ORIENTATION_ROTATE_90 = 6;
  public static final int ORIENTATION_TRANSVERSE = 7;
  public static final int ORIENTATION_ROTATE_270 = 8;

  public ExifInterface(InputStream inputStream) throws IOException {}

  public int getAttributeInt(String tag, int defaultValue) {
    return defaultValue;
  }
}
