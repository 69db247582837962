"""Model answers in the free-text formats the prompts ask for, for scripted stage tests."""

HIGH = ("Usable: yes\nReason: fine\nCorrectness: 9\nCompleteness: 9\nClarity: 9\n"
        "Compliance: 9\nReasoning: 9\nVerdict: high\nJustification: solid")
LOW = HIGH.replace(": 9", ": 4").replace("Verdict: high", "Verdict: low")
UNUSABLE = "Usable: no\nReason: the output is unrelated\nVerdict: low\nJustification: off topic"
EVALUATION = "Score: 5\n\nEvaluation: partial.\n\nSuggestions:\n1. Be specific.\n2. Add units."
REVISION = "instruction_new: Say hello politely.\ninput_new:"
