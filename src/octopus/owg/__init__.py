"""Orchestrated Workflow Graphs: schema, validation, seeded sampling, arrival processes."""

from octopus.owg.schema import ControlBlock, TaskBlock, Workflow, WorkflowError, load_workflow

__all__ = ["ControlBlock", "TaskBlock", "Workflow", "WorkflowError", "load_workflow"]
