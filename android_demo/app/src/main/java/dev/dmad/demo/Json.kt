package dev.dmad.demo

/** A JSON text that does not parse; [offset] is the character index where reading stopped. */
class JsonException(message: String, val offset: Int) : Exception("$message (at character $offset)")

/**
 * A small, strict JSON reader (RFC 8259) for model.json, in plain Kotlin so that the parsing and
 * validation of model.json run in JVM unit tests (the org.json of android.jar is a stub off the
 * phone).
 *
 * Values: an object becomes a `Map<String, Any?>` (key order kept; a repeated key keeps its last
 * value, as Python's json does), an array a `List<Any?>`, a string a `String`, a number without
 * fraction or exponent that fits a Long a `Long`, any other number a `Double`, true/false a
 * `Boolean` and null `null`. NaN, Infinity, comments, trailing commas and leading zeros are
 * refused; nesting deeper than [MAX_DEPTH] is refused.
 */
object Json {
    const val MAX_DEPTH = 64

    fun parse(text: String): Any? {
        val reader = Reader(text)
        reader.skipSpace()
        val value = reader.value(0)
        reader.skipSpace()
        if (!reader.atEnd()) throw reader.fail("unexpected text after the JSON value")
        return value
    }

    private class Reader(private val s: String) {
        private var i = 0

        fun atEnd(): Boolean = i >= s.length

        fun fail(message: String): JsonException = JsonException(message, i)

        fun skipSpace() {
            while (i < s.length && (s[i] == ' ' || s[i] == '\t' || s[i] == '\n' || s[i] == '\r')) i++
        }

        fun value(depth: Int): Any? {
            if (depth > MAX_DEPTH) throw fail("nested deeper than $MAX_DEPTH levels")
            if (atEnd()) throw fail("unexpected end of text")
            return when (s[i]) {
                '{' -> obj(depth)
                '[' -> array(depth)
                '"' -> string()
                't' -> literal("true", true)
                'f' -> literal("false", false)
                'n' -> literal("null", null)
                else -> number()
            }
        }

        private fun literal(word: String, result: Any?): Any? {
            if (!s.startsWith(word, i)) throw fail("unexpected character '${s[i]}'")
            i += word.length
            return result
        }

        private fun obj(depth: Int): Map<String, Any?> {
            val out = LinkedHashMap<String, Any?>()
            i++ // the opening brace
            skipSpace()
            if (i < s.length && s[i] == '}') {
                i++
                return out
            }
            while (true) {
                skipSpace()
                if (atEnd() || s[i] != '"') throw fail("expected a quoted key")
                val key = string()
                skipSpace()
                expect(':')
                skipSpace()
                out.remove(key) // a repeated key keeps its last value, in its last position
                out[key] = value(depth + 1)
                skipSpace()
                if (atEnd()) throw fail("unexpected end of text in an object")
                when (s[i]) {
                    ',' -> i++
                    '}' -> {
                        i++
                        return out
                    }
                    else -> throw fail("expected ',' or the end of the object")
                }
            }
        }

        private fun array(depth: Int): List<Any?> {
            val out = ArrayList<Any?>()
            i++ // the opening bracket
            skipSpace()
            if (i < s.length && s[i] == ']') {
                i++
                return out
            }
            while (true) {
                skipSpace()
                out += value(depth + 1)
                skipSpace()
                if (atEnd()) throw fail("unexpected end of text in an array")
                when (s[i]) {
                    ',' -> i++
                    ']' -> {
                        i++
                        return out
                    }
                    else -> throw fail("expected ',' or the end of the array")
                }
            }
        }

        private fun expect(c: Char) {
            if (atEnd() || s[i] != c) throw fail("expected '$c'")
            i++
        }

        private fun string(): String {
            i++ // the opening quote
            val out = StringBuilder()
            while (true) {
                if (atEnd()) throw fail("unterminated string")
                val c = s[i++]
                when {
                    c == '"' -> return out.toString()
                    c == '\\' -> out.append(escape())
                    c < ' ' -> {
                        i--
                        throw fail("control character in a string")
                    }
                    else -> out.append(c)
                }
            }
        }

        private fun escape(): Char {
            if (atEnd()) throw fail("unterminated escape")
            return when (val c = s[i++]) {
                '"', '\\', '/' -> c
                'b' -> '\b'
                'f' -> '\u000C'
                'n' -> '\n'
                'r' -> '\r'
                't' -> '\t'
                'u' -> {
                    if (i + 4 > s.length) throw fail("short \\u escape")
                    val code = s.substring(i, i + 4).toIntOrNull(16) ?: throw fail("bad \\u escape")
                    i += 4
                    code.toChar()
                }
                else -> {
                    i--
                    throw fail("bad escape '\\$c'")
                }
            }
        }

        private fun number(): Any {
            val start = i
            if (i < s.length && s[i] == '-') i++
            if (atEnd() || !s[i].isAsciiDigit()) throw fail("unexpected character")
            if (s[i] == '0') {
                i++
                if (i < s.length && s[i].isAsciiDigit()) throw fail("leading zero in a number")
            } else {
                digits()
            }
            var integral = true
            if (i < s.length && s[i] == '.') {
                integral = false
                i++
                if (atEnd() || !s[i].isAsciiDigit()) throw fail("digit expected after '.'")
                digits()
            }
            if (i < s.length && (s[i] == 'e' || s[i] == 'E')) {
                integral = false
                i++
                if (i < s.length && (s[i] == '+' || s[i] == '-')) i++
                if (atEnd() || !s[i].isAsciiDigit()) throw fail("digit expected in the exponent")
                digits()
            }
            val text = s.substring(start, i)
            if (integral) text.toLongOrNull()?.let { return it }
            val d = text.toDouble()
            if (d.isInfinite()) throw JsonException("number out of range", start)
            return d
        }

        private fun digits() {
            while (i < s.length && s[i].isAsciiDigit()) i++
        }

        private fun Char.isAsciiDigit(): Boolean = this in '0'..'9'
    }
}
