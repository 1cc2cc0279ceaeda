// Stub for compile checks only (make android-check), written from the public API of LiteRT v1.4.0:
// google-ai-edge/LiteRT tflite/java/src/main/java/org/tensorflow/lite/InterpreterApi.java. Only what the app uses.
package org.tensorflow.lite;

public interface InterpreterApi extends AutoCloseable {
  class Options {
    public Options() {}

    public Options setNumThreads(int numThreads) {
      return this;
    }

    public Options addDelegate(Delegate delegate) {
      return this;
    }

    public Options setCancellable(boolean allow) {
      return this;
    }
  }

  void run(Object input, Object output);

  void allocateTensors();

  void resizeInput(int idx, int[] dims);

  int getInputTensorCount();

  Tensor getInputTensor(int inputIndex);

  int getOutputTensorCount();

  Tensor getOutputTensor(int outputIndex);

  @Override
  void close();
}
