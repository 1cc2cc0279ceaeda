// make android-check: android.jar of API 23 (the newest on Debian) declares Activity.findViewById(int) as
// returning View; since API 26 (this app's minSdk; it compiles against API 36) it is
// <T extends View> T findViewById(int). This rewrites only that method's generic Signature attribute in a
// copy of android/app/Activity.class, so the app compiles against the API it really targets. Bytecode
// (descriptor, code) is unchanged. Uses the JDK's internal copy of ASM (JDK 17).
import java.nio.file.Files;
import java.nio.file.Path;
import jdk.internal.org.objectweb.asm.ClassReader;
import jdk.internal.org.objectweb.asm.ClassVisitor;
import jdk.internal.org.objectweb.asm.ClassWriter;
import jdk.internal.org.objectweb.asm.MethodVisitor;
import jdk.internal.org.objectweb.asm.Opcodes;

public final class GenericFindViewById {
  public static void main(String[] args) throws Exception {
    byte[] in = Files.readAllBytes(Path.of(args[0]));
    ClassWriter out = new ClassWriter(0);
    boolean[] done = {false};
    new ClassReader(in).accept(new ClassVisitor(Opcodes.ASM8, out) {
      @Override
      public MethodVisitor visitMethod(int access, String name, String desc, String sig, String[] ex) {
        if (name.equals("findViewById") && desc.equals("(I)Landroid/view/View;")) {
          sig = "<T:Landroid/view/View;>(I)TT;";
          done[0] = true;
        }
        return super.visitMethod(access, name, desc, sig, ex);
      }
    }, 0);
    if (!done[0]) throw new IllegalStateException("no findViewById(I)Landroid/view/View; in " + args[0]);
    Files.write(Path.of(args[1]), out.toByteArray());
  }
}
