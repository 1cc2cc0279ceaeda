// Stub for compile checks only (make android-check), written from the public API of LiteRT v1.4.0:
// google-ai-edge/LiteRT tflite/delegates/gpu/java/src/main/java/org/tensorflow/lite/gpu/GpuDelegateFactory.java.
package org.tensorflow.lite.gpu;

public class GpuDelegateFactory {
  public static class Options {
    public Options() {}
  }
}
