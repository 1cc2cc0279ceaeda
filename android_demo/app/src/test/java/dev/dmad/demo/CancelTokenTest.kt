package dev.dmad.demo

import org.junit.Assert.assertEquals
import org.junit.Assert.assertFalse
import org.junit.Assert.assertThrows
import org.junit.Assert.assertTrue
import org.junit.Test

class CancelTokenTest {
    @Test
    fun cancelDuringARunCallsItsHookOnce() {
        val token = CancelToken()
        var interrupts = 0
        token.whileRunning({ interrupts++ }) {
            token.cancel()
            token.cancel()
        }
        assertEquals(1, interrupts)
        assertTrue(token.isCancelled)
    }

    @Test
    fun theHookIsGoneAfterTheRun() {
        val token = CancelToken()
        var interrupts = 0
        assertEquals(7, token.whileRunning({ interrupts++ }) { 7 })
        token.cancel() // the interpreter may be closed by now: its hook must not be called
        assertEquals(0, interrupts)
    }

    @Test
    fun aCancelledTokenRunsNothing() {
        val token = CancelToken()
        token.cancel()
        var ran = false
        assertThrows(CancelledException::class.java) { token.whileRunning({}) { ran = true } }
        assertFalse(ran)
        assertThrows(CancelledException::class.java) { token.check() }
    }

    @Test
    fun aFailingHookDoesNotBreakCancel() {
        val token = CancelToken()
        token.whileRunning({ throw IllegalStateException("interpreter closed") }) { token.cancel() }
        assertTrue(token.isCancelled)
    }
}
