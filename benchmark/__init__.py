"""dmad.benchmark: latency of full vs compressed generators on this CPU and on phones."""
