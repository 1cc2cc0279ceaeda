// Stub for compile checks only (make android-check), written from the public API of LiteRT v1.4.0:
// google-ai-edge/LiteRT tflite/delegates/gpu/java/src/main/java/org/tensorflow/lite/gpu/CompatibilityList.java.
package org.tensorflow.lite.gpu;

public class CompatibilityList implements java.io.Closeable {
  public CompatibilityList() {}

  public boolean isDelegateSupportedOnThisDevice() {
    return false;
  }

  public GpuDelegate.Options getBestOptionsForThisDevice() {
    return new GpuDelegate.Options();
  }

  @Override
  public void close() {}
}
