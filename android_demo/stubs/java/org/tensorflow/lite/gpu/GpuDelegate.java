// Stub for compile checks only (make android-check), written from the public API of LiteRT v1.4.0:
// google-ai-edge/LiteRT tflite/delegates/gpu/java/src/main/java/org/tensorflow/lite/gpu/GpuDelegate.java.
package org.tensorflow.lite.gpu;

import org.tensorflow.lite.Delegate;

public class GpuDelegate implements Delegate {
  /** Deprecated in LiteRT 1.4.0: use GpuDelegateFactory.Options (CompatibilityList still returns this type). */
  @Deprecated
  public static class Options extends GpuDelegateFactory.Options {}

  public GpuDelegate(GpuDelegateFactory.Options options) {}

  public GpuDelegate() {}

  @Override
  public long getNativeHandle() {
    return 0;
  }

  @Override
  public void close() {}
}
