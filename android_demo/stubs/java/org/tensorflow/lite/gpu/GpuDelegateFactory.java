// Stub for compile checks only (make android-check), written from the public API of LiteRT v1.4.0:
// google-ai-edge/LiteRT tflite/delegates/gpu/java/src/main/java/org/tensorflow/lite/gpu/GpuDelegateFactory.java
// (the real class implements DelegateFactory; its Options setters return Options). Only what the app uses.
package org.tensorflow.lite.gpu;

public class GpuDelegateFactory {
  public static class Options {
    public Options() {}

    public static final int INFERENCE_PREFERENCE_FAST_SINGLE_ANSWER = 0;

    public static final int INFERENCE_PREFERENCE_SUSTAINED_SPEED = 1;

    public Options setPrecisionLossAllowed(boolean precisionLossAllowed) {
      return this;
    }

    public Options setInferencePreference(int preference) {
      return this;
    }

    public Options setSerializationParams(String serializationDir, String modelToken) {
      return this;
    }
  }
}
