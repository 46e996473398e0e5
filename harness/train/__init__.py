"""Training and continual training of tiny models: TBPTT with the state carried.

`harness train` lives here: data sources and their mixing (`data`), the learning-rate
schedule (`schedule`), model families as trainables (`models`), save/resume (`checkpoint`),
the loop (`loop`) and the command line (`cli`).
"""
