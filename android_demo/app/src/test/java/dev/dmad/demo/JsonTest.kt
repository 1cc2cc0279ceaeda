package dev.dmad.demo

import org.junit.Assert.assertEquals
import org.junit.Assert.assertNull
import org.junit.Assert.assertThrows
import org.junit.Assert.assertTrue
import org.junit.Test

class JsonTest {
    @Test
    fun parsesObjectsArraysAndScalars() {
        val v = Json.parse("""{"a": [1, -2, 3.5, 1e3, true, false, null], "b": {"c": "d"}}""")
        assertEquals(
            mapOf("a" to listOf(1L, -2L, 3.5, 1000.0, true, false, null), "b" to mapOf("c" to "d")),
            v,
        )
    }

    @Test
    fun integersAreLongsAndFractionsAreDoubles() {
        // model.json's rules tell an integer shape (Long) from 256.0 (Double), as Python's json does.
        assertTrue(Json.parse("256") is Long)
        assertTrue(Json.parse("256.0") is Double)
        assertTrue(Json.parse("2e2") is Double)
        assertEquals(-0L, Json.parse("-0"))
        assertTrue(Json.parse("123456789012345678901234567890") is Double)
    }

    @Test
    fun decodesEscapes() {
        assertEquals("a\"b\\c/d\n\t\u00e9\ud83d\ude00", Json.parse(""""a\"b\\c\/d\n\t\u00e9\ud83d\ude00""""))
    }

    @Test
    fun repeatedKeyKeepsTheLastValue() {
        assertEquals(mapOf("k" to 2L), Json.parse("""{"k": 1, "k": 2}"""))
    }

    @Test
    fun emptyContainersAndWhitespace() {
        assertEquals(mapOf("a" to emptyList<Any?>(), "b" to emptyMap<String, Any?>()), Json.parse(" \n{ \"a\" : [ ] , \"b\" : { } }\r\n"))
        assertNull(Json.parse("null"))
    }

    @Test
    fun refusesWhatIsNotStrictJson() {
        for (bad in listOf(
            "", "{", "[1, 2", "[1, 2,]", "{\"a\": 1,}", "{a: 1}", "'a'", "01", "1.", ".5", "1e", "-",
            "NaN", "Infinity", "[1] [2]", "\"abc", "\"a\u0001b\"", "\"\\x\"", "\"\\u12\"", "tru", "nul", "1e999",
        )) {
            assertThrows("should refuse: $bad", JsonException::class.java) { Json.parse(bad) }
        }
    }

    @Test
    fun reportsWhereItStopped() {
        val e = assertThrows(JsonException::class.java) { Json.parse("""{"a": 1 "b": 2}""") }
        assertEquals(8, e.offset)
        assertTrue(e.message!!, e.message!!.contains("expected ',' or the end of the object"))
    }

    @Test
    fun refusesDeepNesting() {
        val ok = "[".repeat(Json.MAX_DEPTH) + "]".repeat(Json.MAX_DEPTH)
        Json.parse(ok)
        val deep = "[".repeat(Json.MAX_DEPTH + 2) + "]".repeat(Json.MAX_DEPTH + 2)
        assertThrows(JsonException::class.java) { Json.parse(deep) }
    }
}
