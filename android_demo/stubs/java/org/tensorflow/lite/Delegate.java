// Stub for compile checks only (make android-check), written from the public API of LiteRT v1.4.0:
// google-ai-edge/LiteRT tflite/java/src/main/java/org/tensorflow/lite/Delegate.java. Only what the app uses.
package org.tensorflow.lite;

public interface Delegate extends java.io.Closeable {
  long getNativeHandle();

  @Override
  default void close() {}
}
