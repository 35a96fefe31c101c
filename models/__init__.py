"""Model builders: teacher, students, the 4-bit generative student and projections."""
