"""aimo_lib: SC-TIR (self-consistency with tool-integrated reasoning) for the AI Mathematical
Olympiad: a sandboxed executor, generation engines, answer voting, the solver."""

from .presets import SolverConfig
from .results import SolveResult
from .solver import Solver

__all__ = ["SolveResult", "Solver", "SolverConfig"]
__version__ = "0.1.0"
