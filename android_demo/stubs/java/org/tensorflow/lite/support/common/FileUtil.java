// Stub for compile checks only (make android-check), written from the public API of the LiteRT support
// library (litert-support 1.4.0; documented in google-ai-edge/LiteRT v1.4.0
// tflite/g3doc/api_docs/java/org/tensorflow/lite/support/common/FileUtil.html). Only what the app uses.
package org.tensorflow.lite.support.common;

import android.content.Context;
import java.io.IOException;
import java.nio.MappedByteBuffer;

public final class FileUtil {
  private FileUtil() {}

  public static MappedByteBuffer loadMappedFile(Context context, String filePath)
      throws IOException {
    throw new UnsupportedOperationException("stub");
  }
}
