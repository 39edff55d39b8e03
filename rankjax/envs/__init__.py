"""Multi-turn environments and tools for rollouts (see `_protocol`)."""

from rankjax.envs._calculator import HostCalculator, calculator
from rankjax.envs._config import BUILTIN_ENVS, from_config
from rankjax.envs._games import GuessNumber, guess_records
from rankjax.envs._host import HostEnv, host
from rankjax.envs._tools import ToolEnv, function_schema, parse_tool_calls, tool_observation
from rankjax.envs._protocol import (
    EnvError,
    Environment,
    HostEnvironment,
    HostStep,
    Limits,
    OBSERVATIONS,
    Observation,
    Traceable,
)

__all__ = ["EnvError", "Environment", "HostEnvironment", "HostStep", "Limits", "OBSERVATIONS", "Observation",
           "Traceable", "HostCalculator", "calculator", "HostEnv", "host", "BUILTIN_ENVS", "from_config",
           "GuessNumber", "guess_records", "ToolEnv", "function_schema", "parse_tool_calls",
           "tool_observation"]
