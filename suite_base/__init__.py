"""What every layer needs, below all of them: exception types (:mod:`.errors`), atomic writes (:mod:`.io`) and the
few plain names that tasks and data both use. Imports none of ``experiments``, ``lightning_modules`` or
``datamodules``; needs only the standard library."""
