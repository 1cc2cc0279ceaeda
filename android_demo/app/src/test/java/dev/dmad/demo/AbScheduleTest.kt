package dev.dmad.demo

import org.junit.Assert.assertEquals
import org.junit.Assert.assertFalse
import org.junit.Assert.assertNull
import org.junit.Assert.assertThrows
import org.junit.Assert.assertTrue
import org.junit.Test

class AbScheduleTest {
    @Test
    fun planAlternatesTheArmsWarmUpFirst() {
        val plan = AbSchedule.plan(arms = 2, warmupRounds = 1, timedRounds = 2)
        assertEquals(
            listOf(
                AbStep(0, 0, false), AbStep(1, 0, false),
                AbStep(0, 0, true), AbStep(1, 0, true),
                AbStep(0, 1, true), AbStep(1, 1, true),
            ),
            plan,
        )
    }

    @Test
    fun runCallsFullThenCompressedRoundByRound() {
        val calls = mutableListOf<String>()
        var clock = 0.0
        val full = { calls += "full"; clock += 1.0; 100.0 + clock }
        val compressed = { calls += "compressed"; clock += 1.0; 20.0 + clock }
        val r = AbSchedule.run(listOf(full, compressed), warmupRounds = 2, timedRounds = 3, cancel = CancelToken())
        assertEquals(List(5) { listOf("full", "compressed") }.flatten(), calls)
        // Warm-up times are dropped; the timed ones are kept per arm, in order.
        assertEquals(listOf(105.0, 107.0, 109.0), r.times[0].toList())
        assertEquals(listOf(26.0, 28.0, 30.0), r.times[1].toList())
        assertEquals(3, r.completedRounds)
        assertFalse(r.cancelled)
        assertEquals(107.0 / 28.0, r.pairedSpeedup!!, 1e-12)
    }

    @Test
    fun progressCountsEveryRun() {
        val seen = mutableListOf<Pair<Int, Int>>()
        AbSchedule.run(listOf({ 1.0 }, { 1.0 }), 1, 1, CancelToken()) { done, total -> seen += done to total }
        assertEquals(listOf(1 to 4, 2 to 4, 3 to 4, 4 to 4), seen)
    }

    @Test
    fun cancellingBetweenArmsDropsTheUnpairedRun() {
        val token = CancelToken()
        var n = 0
        // Runs: warm-up full (n=1), compressed (2); round 0: full (3), compressed (4); round 1: full (5),
        // during which the user cancels, so round 1's compressed run is never made.
        val full = { n++; if (n == 5) token.cancel(); 10.0 }
        val compressed = { n++; 5.0 }
        val r = AbSchedule.run(listOf(full, compressed), warmupRounds = 1, timedRounds = 10, cancel = token)
        assertTrue(r.cancelled)
        assertEquals(1, r.completedRounds)
        assertEquals(1, r.times[0].size)
        assertEquals(1, r.times[1].size)
        assertEquals(2.0, r.pairedSpeedup!!, 0.0)
    }

    @Test
    fun aRunInterruptedByCancelStopsTheMeasurement() {
        val token = CancelToken()
        var runs = 0
        val arm = { runs++; if (runs == 3) { token.cancel(); throw CancelledException() }; 1.0 }
        val r = AbSchedule.run(listOf(arm), warmupRounds = 0, timedRounds = 10, cancel = token)
        assertTrue(r.cancelled)
        assertEquals(2, r.completedRounds)
        assertNull(r.pairedSpeedup)
    }

    @Test
    fun otherFailuresPropagate() {
        assertThrows(IllegalStateException::class.java) {
            AbSchedule.run(listOf({ error("delegate died") }), 0, 1, CancelToken())
        }
    }

    @Test
    fun oneModelHasNoSpeedup() {
        val r = AbSchedule.run(listOf({ 3.0 }), 0, 4, CancelToken())
        assertEquals(4, r.completedRounds)
        assertNull(r.pairedSpeedup)
        assertEquals(3.0, r.summary(0)!!.medianMs, 0.0)
    }
}
