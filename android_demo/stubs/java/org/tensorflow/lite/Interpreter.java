// Stub for compile checks only (make android-check), written from the public API of LiteRT v1.4.0:
// google-ai-edge/LiteRT tflite/java/src/main/java/org/tensorflow/lite/Interpreter.java (the real class extends
// InterpreterImpl; its Options extends InterpreterImpl.Options, whose setters return Interpreter.Options).
package org.tensorflow.lite;

import java.nio.ByteBuffer;

public final class Interpreter implements InterpreterApi {
  public static class Options extends InterpreterApi.Options {
    public Options() {}

    @Override
    public Options setNumThreads(int numThreads) {
      return this;
    }

    @Override
    public Options addDelegate(Delegate delegate) {
      return this;
    }

    @Override
    public Options setCancellable(boolean allow) {
      return this;
    }
  }

  public Interpreter(ByteBuffer byteBuffer) {}

  public Interpreter(ByteBuffer byteBuffer, Options options) {}

  @Override
  public void run(Object input, Object output) {}

  @Override
  public void allocateTensors() {}

  @Override
  public void resizeInput(int idx, int[] dims) {}

  /** Interrupts a run between operators; needs Options.setCancellable(true) (else IllegalStateException). */
  public void setCancelled(boolean cancelled) {}

  @Override
  public int getInputTensorCount() {
    return 0;
  }

  @Override
  public Tensor getInputTensor(int inputIndex) {
    throw new UnsupportedOperationException("stub");
  }

  @Override
  public int getOutputTensorCount() {
    return 0;
  }

  @Override
  public Tensor getOutputTensor(int outputIndex) {
    throw new UnsupportedOperationException("stub");
  }

  @Override
  public void close() {}
}
