"""The shapes world: a toy, exactly scorable image domain for a tiny SD-1.5-shaped model.

``world`` draws captioned scenes of flat shapes, ``scorer`` judges images against the objects a prompt
asks for, ``tokenizer`` builds the word-level CLIP tokenizer, ``training`` trains the preset and
``evaluation`` measures it. ``world`` and ``scorer`` need only numpy and Pillow; nothing here is imported
by ``core`` itself.
"""
