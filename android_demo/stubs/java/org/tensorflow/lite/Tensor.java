// Stub for compile checks only (make android-check), written from the public API of LiteRT v1.4.0:
// google-ai-edge/LiteRT tflite/java/src/main/java/org/tensorflow/lite/Tensor.java. Only what the app uses.
package org.tensorflow.lite;

public interface Tensor {
  class QuantizationParams {
    public QuantizationParams(final float scale, final int zeroPoint) {}

    public float getScale() {
      throw new UnsupportedOperationException("stub");
    }

    public int getZeroPoint() {
      throw new UnsupportedOperationException("stub");
    }
  }

  DataType dataType();

  int[] shape();

  QuantizationParams quantizationParams();
}
