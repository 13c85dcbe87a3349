"""The pipeline layer: a RunConfig through the stages (teacher, reference, students) into a workdir."""
