package dev.dmad.demo

import org.junit.Assert.assertEquals
import org.junit.Assert.assertThrows
import org.junit.Test

class LatencyTest {
    @Test
    fun medianOfAnOddCountIsTheMiddleValue() {
        assertEquals(3.0, Latency.median(doubleArrayOf(9.0, 1.0, 3.0)), 0.0)
    }

    @Test
    fun medianOfAnEvenCountIsTheMeanOfTheTwoMiddleValues() {
        assertEquals(2.5, Latency.median(doubleArrayOf(4.0, 1.0, 3.0, 2.0)), 0.0)
        assertEquals(15.0, Latency.median(doubleArrayOf(10.0, 20.0)), 0.0)
    }

    @Test
    fun medianIgnoresOneSlowRunWhereTheMeanDoesNot() {
        val times = doubleArrayOf(10.0, 11.0, 10.5, 400.0, 10.2)
        assertEquals(10.5, Latency.median(times), 0.0)  // the mean would be 88.3
    }

    @Test
    fun medianDoesNotReorderItsInput() {
        val times = doubleArrayOf(3.0, 1.0, 2.0)
        Latency.median(times)
        assertEquals(listOf(3.0, 1.0, 2.0), times.toList())
    }

    @Test
    fun medianOfNothingIsRefused() {
        assertThrows(IllegalArgumentException::class.java) { Latency.median(DoubleArray(0)) }
    }

    @Test
    fun pairedSpeedupIsTheMedianOfPerRoundRatios() {
        // Round ratios 100/50 = 2, 300/100 = 3, 120/30 = 4: median 3.
        val full = doubleArrayOf(100.0, 300.0, 120.0)
        val compressed = doubleArrayOf(50.0, 100.0, 30.0)
        assertEquals(3.0, Latency.pairedSpeedup(full, compressed), 1e-12)
        // The ratio of medians (120 / 50 = 2.4) is another number: the two are not interchangeable.
        assertEquals(2.4, Latency.ratioOfMedians(full, compressed), 1e-12)
    }

    @Test
    fun pairedSpeedupWithAnEvenCountAveragesTheMiddleRatios() {
        val full = doubleArrayOf(10.0, 10.0, 10.0, 10.0)
        val compressed = doubleArrayOf(10.0, 5.0, 4.0, 2.0) // ratios 1, 2, 2.5, 5
        assertEquals(2.25, Latency.pairedSpeedup(full, compressed), 1e-12)
    }

    @Test
    fun pairedSpeedupNeedsPairs() {
        assertThrows(IllegalArgumentException::class.java) { Latency.pairedSpeedup(doubleArrayOf(1.0, 2.0), doubleArrayOf(1.0)) }
        assertThrows(IllegalArgumentException::class.java) { Latency.pairedSpeedup(DoubleArray(0), DoubleArray(0)) }
        assertThrows(IllegalArgumentException::class.java) { Latency.pairedSpeedup(doubleArrayOf(1.0), doubleArrayOf(0.0)) }
    }

    @Test
    fun summaryHasMedianMinMaxAndCount() {
        assertEquals(LatencySummary(4, 2.5, 1.0, 4.0), LatencySummary.of(doubleArrayOf(4.0, 1.0, 3.0, 2.0)))
    }
}
