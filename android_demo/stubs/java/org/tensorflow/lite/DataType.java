// Stub for compile checks only (make android-check), written from the public API of LiteRT v1.4.0:
// google-ai-edge/LiteRT tflite/java/src/main/java/org/tensorflow/lite/DataType.java.
package org.tensorflow.lite;

public enum DataType {
  FLOAT32, INT32, UINT8, INT64, STRING, BOOL, INT16, INT8;

  public int byteSize() {
    throw new UnsupportedOperationException("stub");
  }
}
