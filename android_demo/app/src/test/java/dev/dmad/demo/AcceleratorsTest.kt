package dev.dmad.demo

import org.junit.Assert.assertEquals
import org.junit.Assert.assertNotEquals
import org.junit.Assert.assertTrue
import org.junit.Test
import java.nio.ByteBuffer

class AcceleratorsTest {
    @Test
    fun tableHasCpu1Cpu4GpuAndNnapiWherePresent() {
        val onOreo = AcceleratorTable.rows(26)
        assertEquals(listOf("CPU, 1 thread", "CPU, 4 threads", "GPU"), onOreo.map { it.label })
        val later = AcceleratorTable.rows(34)
        assertEquals(listOf("CPU, 1 thread", "CPU, 4 threads", "GPU", "NNAPI"), later.map { it.label })
        assertEquals(RunSetting(Accelerator.CPU, 1), later[0])
        assertEquals(RunSetting(Accelerator.NNAPI, AcceleratorTable.TABLE_THREADS), later[3])
    }

    @Test
    fun acceleratorKeysAreModelJsonsForDelegateKeys() {
        assertEquals(listOf("cpu", "gpu", "nnapi"), Accelerator.entries.map { it.key })
    }

    @Test
    fun gpuCacheTokenDependsOnModelBytesAndSize() {
        val a = GpuCacheToken.digest(ByteBuffer.wrap(byteArrayOf(1, 2, 3)))
        val b = GpuCacheToken.digest(ByteBuffer.wrap(byteArrayOf(1, 2, 4)))
        assertNotEquals(a, b)
        assertEquals(32, a.length)
        // sha256("\x01\x02\x03") starts with 039058c6f2c0cb49
        assertTrue(a, a.startsWith("039058c6f2c0cb49"))
        val t = GpuCacheToken.token(a, 1024, 768)
        assertNotEquals(t, GpuCacheToken.token(a, 256, 256))
        assertTrue(t, t.matches(Regex("[A-Za-z0-9_]+")))
    }

    @Test
    fun digestDoesNotMoveTheBuffer() {
        val buf = ByteBuffer.wrap(byteArrayOf(5, 6, 7, 8))
        buf.position(2)
        GpuCacheToken.digest(buf)
        assertEquals(2, buf.position())
    }
}
